"""MkDocs hook: relative links from docs/ to files elsewhere in the repository, such as ../bench/README.md.

On a code host such a link just works. MkDocs knows only docs/, so this hook adds every file so linked to
the site under _repository/<its path> (a Markdown file becomes a page there) and points the link at it.
A link to a file that does not exist is a warning, which `mkdocs build --strict` turns into a failure.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

log = logging.getLogger("mkdocs.hooks.repository_links")
LINK = re.compile(r"(\]\()([^)\s#:]+)([#)])")  # ](target) or ](target#anchor); no scheme (no ':')
PREFIX = "_repository"


def _roots(config) -> tuple[Path, Path]:
    docs = Path(config.docs_dir).resolve()
    return docs, docs.parent


def _real_path(file: File) -> Path:
    return Path(file.abs_src_path).resolve()


def on_files(files: Files, config) -> Files:
    docs, root = _roots(config)
    queue = list(files.documentation_pages())
    while queue:
        page = queue.pop()
        source = _real_path(page)
        for _, target, _ in LINK.findall(source.read_text(encoding="utf-8")):
            path = (source.parent / target).resolve()
            if path.is_relative_to(docs) or not path.is_relative_to(root):
                continue  # MkDocs checks links inside docs/ itself
            if not path.is_file():
                log.warning("%s links to %s, which is not in the repository", source.relative_to(root), target)
                continue
            uri = f"{PREFIX}/{path.relative_to(root).as_posix()}"
            if files.get_file_from_path(uri) is None:
                added = File.generated(config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
                files.append(added)
                if added.is_documentation_page():
                    queue.append(added)
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    docs, root = _roots(config)
    source = _real_path(page.file)
    here = Path(page.file.src_uri).parent  # where the page sits in the site's tree

    def rewrite(match: re.Match) -> str:
        path = (source.parent / match.group(2)).resolve()
        if path.is_relative_to(docs):
            site_path = path.relative_to(docs)
        elif path.is_relative_to(root) and path.is_file():
            site_path = Path(PREFIX) / path.relative_to(root)
        else:
            return match.group(0)
        return match.group(1) + Path(os.path.relpath(site_path, here)).as_posix() + match.group(3)

    return LINK.sub(rewrite, markdown)
