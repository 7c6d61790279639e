// pixelserve page: drawing canvas, drag-and-drop, and predictions without a page reload.
// Without this script the page still works as a plain form posted to the server.
"use strict";

(function () {
  const form = document.getElementById("predict-form");
  if (!form) return;

  const apiUrl = form.dataset.api;
  const maxBytes = Number(form.dataset.maxBytes);
  const modelSelect = document.getElementById("model");
  const fileInput = document.getElementById("file");
  const dropZone = document.getElementById("drop-zone");
  const canvas = document.getElementById("canvas");
  const clearButton = document.getElementById("clear-button");
  const resultPanel = document.getElementById("result-panel");
  const errorTitles = JSON.parse(document.getElementById("error-titles").textContent);

  const elements = {
    error: document.getElementById("error"),
    errorTitle: document.getElementById("error-title"),
    errorMessage: document.getElementById("error-message"),
    placeholder: document.getElementById("result-placeholder"),
    result: document.getElementById("result"),
    label: document.getElementById("prediction-label"),
    picture: document.getElementById("picture"),
    modelInput: document.getElementById("model-input"),
    explanation: document.getElementById("explanation"),
    explainedLabel: document.getElementById("explained-label"),
    warnings: document.getElementById("warnings"),
    bars: document.getElementById("probabilities"),
    barTemplate: document.getElementById("bar-template"),
    model: document.getElementById("result-model"),
    time: document.getElementById("result-time"),
    quickAnswer: document.getElementById("quick-answer"),
  };

  let hasInk = false;    // whether the canvas holds a drawing
  let drawing = null;    // the pointer id of the stroke in progress
  let latestRequest = 0; // answers to older requests are dropped

  for (const element of document.querySelectorAll(".js-only")) element.hidden = false;

  // The canvas is for the models that read drawn ink (digits, clothing); every model takes uploads.
  const drawPanel = document.getElementById("draw-panel");
  function chosenDrawable() {
    const option = modelSelect && modelSelect.selectedOptions[0];
    return !option || option.dataset.drawable !== "false";
  }
  function showDrawPanel() {
    if (drawPanel) drawPanel.hidden = !chosenDrawable();
  }
  showDrawPanel();

  // ---- Showing results and errors -------------------------------------------------------------

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  // Beside the canvas, so a phone shows the answer without scrolling away from the drawing.
  function showQuickAnswer(text) {
    if (!elements.quickAnswer) return;
    elements.quickAnswer.textContent = text;
    elements.quickAnswer.hidden = !text;
  }

  function showError(code, message) {
    showQuickAnswer("");
    elements.errorTitle.textContent = errorTitles[code] || errorTitles.invalid_input;
    elements.errorMessage.textContent = capitalise(message || "");
    elements.error.hidden = false;
    elements.result.hidden = true;
    elements.placeholder.hidden = true;
  }

  function showResult(answer) {
    elements.error.hidden = true;
    elements.placeholder.hidden = true;
    elements.label.textContent = answer.label;
    elements.picture.src = answer.picture_png;
    elements.modelInput.src = answer.input_png;
    const [height, width] = answer.input_size;
    elements.modelInput.width = width;
    elements.modelInput.height = height;
    elements.explanation.width = width;
    elements.explanation.height = height;
    elements.modelInput.alt = "The " + width + " by " + height + " pixel input the model saw";
    document.getElementById("model-input-caption").textContent = "What the model saw (" + width + "\u00d7" + height + ")";
    elements.explanation.src = answer.explanation_png;
    elements.explainedLabel.textContent = answer.explained_label;
    elements.warnings.replaceChildren();
    (answer.warnings || []).forEach(function (warning) {
      const item = document.createElement("li");
      item.className = "warning warning-" + warning.code;
      item.dataset.code = warning.code;
      item.textContent = capitalise(warning.message);
      elements.warnings.appendChild(item);
    });
    elements.warnings.hidden = !(answer.warnings || []).length;
    elements.bars.replaceChildren();
    const shown = answer.top.length, classes = Object.keys(answer.probabilities).length;
    document.getElementById("bars-heading").textContent =
      shown < classes ? "The " + shown + " most probable classes" : "Probability of each class";
    answer.top.forEach(function (item, index) {
      const row = elements.barTemplate.content.firstElementChild.cloneNode(true);
      const percent = item.probability * 100;
      row.querySelector(".bar-label").textContent = item.label;
      row.querySelector(".bar-fill").style.width = percent.toFixed(2) + "%";
      row.querySelector(".bar-value").textContent = percent.toFixed(1) + "%";
      if (index === 0) row.classList.add("top");
      elements.bars.appendChild(row);
    });
    const t = answer.timing_ms;
    elements.model.textContent = answer.model + " v" + answer.version;
    elements.time.textContent = t.total.toFixed(1) + " ms (" + t.preprocess.toFixed(1) + " ms preprocessing, " +
      t.inference.toFixed(1) + " ms inference)";
    elements.result.hidden = false;
    showQuickAnswer("The model says " + answer.label + " (" + (answer.top[0].probability * 100).toFixed(1) + "%)");
    document.title = answer.label + " · pixelserve: classify a picture";
  }

  // ---- Talking to the server ------------------------------------------------------------------

  async function predict(blob, filename) {
    if (blob.size > maxBytes) {
      showError("payload_too_large", "the file is " + (blob.size / 1e6).toFixed(1) + " MB; pictures up to " +
        (maxBytes / 1e6).toFixed(1) + " MB are accepted");
      return;
    }
    const body = new FormData();
    body.append("model", modelSelect.value);
    body.append("file", blob, filename);
    const request = ++latestRequest;
    resultPanel.setAttribute("aria-busy", "true");
    try {
      const apiKey = document.getElementById("api-key");
      const headers = apiKey && apiKey.value ? { "X-API-Key": apiKey.value } : {};
      const response = await fetch(apiUrl, { method: "POST", body: body, headers: headers });
      const answer = await response.json().catch(function () { return null; });
      if (request !== latestRequest) return;  // a newer prediction is on its way
      if (response.ok && answer) {
        showResult(answer);
      } else if (answer && answer.error && answer.error.message) {
        showError(answer.error.code || (response.status >= 500 ? "internal_error" : "invalid_input"), answer.error.message);
      } else if (response.status === 413) {
        showError("payload_too_large", "pictures up to " + (maxBytes / 1e6).toFixed(1) + " MB are accepted");
      } else {
        showError("internal_error", "the server answered HTTP " + response.status + "; try again in a moment");
      }
    } catch (failure) {
      if (request === latestRequest) {
        showError("network_error", "check that the server is still running, then try again");
      }
    } finally {
      if (request === latestRequest) resultPanel.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const file = fileInput.files[0];
    if (file) {
      predict(file, file.name);
    } else if (hasInk && chosenDrawable()) {
      predictDrawing();
    } else {
      showError("invalid_input", chosenDrawable() ? "choose a picture file or draw a digit first" : "choose a picture file first");
    }
  });

  fileInput.addEventListener("change", function () {
    if (fileInput.files[0]) predict(fileInput.files[0], fileInput.files[0].name);
  });

  modelSelect.addEventListener("change", function () {
    const details = document.getElementById("model-details");
    if (details) details.textContent = modelSelect.selectedOptions[0].dataset.details;
    showDrawPanel();
    if (fileInput.files[0]) predict(fileInput.files[0], fileInput.files[0].name);
    else if (hasInk && chosenDrawable()) predictDrawing();
  });

  // ---- Drag and drop --------------------------------------------------------------------------

  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, function (event) {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, function () { dropZone.classList.remove("dragging"); });
  }
  dropZone.addEventListener("drop", function (event) {
    event.preventDefault();
    const files = event.dataTransfer.files;
    if (!files.length) return;
    fileInput.files = files;  // keeps the form's file field in step with what was dropped
    predict(files[0], files[0].name);
  });

  // ---- Drawing canvas -------------------------------------------------------------------------
  // White strokes on an opaque black background: the MNIST convention, so the exported PNG has no
  // transparency for the preprocessing to guess about. The page has no canvas when no model is ready.

  function predictDrawing() {
    canvas.toBlob(function (blob) { if (blob) predict(blob, "drawing.png"); }, "image/png");
  }

  if (canvas) setUpDrawing(canvas.getContext("2d"));

  function setUpDrawing(pen) {
    function clearCanvas() {
      pen.save();
      pen.fillStyle = "#000";
      pen.fillRect(0, 0, canvas.width, canvas.height);
      pen.restore();
      hasInk = false;
    }

    function toCanvas(event) {
      const box = canvas.getBoundingClientRect();
      return {
        x: (event.clientX - box.left) * (canvas.width / box.width),
        y: (event.clientY - box.top) * (canvas.height / box.height),
      };
    }

    clearCanvas();
    pen.strokeStyle = "#fff";
    pen.fillStyle = "#fff";
    pen.lineWidth = canvas.width / 14;  // about two pixels once the digit is scaled into MNIST's 20x20 box
    pen.lineCap = "round";
    pen.lineJoin = "round";

    canvas.addEventListener("pointerdown", function (event) {
      if (drawing !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
      event.preventDefault();
      drawing = event.pointerId;
      canvas.setPointerCapture(event.pointerId);
      const point = toCanvas(event);
      pen.beginPath();
      pen.arc(point.x, point.y, pen.lineWidth / 2, 0, 2 * Math.PI);
      pen.fill();
      pen.beginPath();
      pen.moveTo(point.x, point.y);
      hasInk = true;
    });

    canvas.addEventListener("pointermove", function (event) {
      if (event.pointerId !== drawing) return;
      const steps = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const step of steps.length ? steps : [event]) {
        const point = toCanvas(step);
        pen.lineTo(point.x, point.y);
      }
      pen.stroke();
      const last = toCanvas(event);
      pen.beginPath();
      pen.moveTo(last.x, last.y);
    });

    function endStroke(event) {
      if (event.pointerId !== drawing) return;
      drawing = null;
      if (fileInput.value) fileInput.value = "";  // the drawing is now the picture to classify
      predictDrawing();
    }
    canvas.addEventListener("pointerup", endStroke);
    canvas.addEventListener("pointercancel", endStroke);

    // Clear starts over: a blank canvas, no file, no result.
    clearButton.addEventListener("click", function () {
      clearCanvas();
      fileInput.value = "";
      latestRequest++;
      resultPanel.removeAttribute("aria-busy");
      elements.result.hidden = true;
      elements.error.hidden = true;
      elements.placeholder.hidden = false;
      showQuickAnswer("");
      document.title = "pixelserve: classify a picture";
    });
  }
})();
