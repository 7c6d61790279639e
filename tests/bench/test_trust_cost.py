"""bench/trust_cost.py: the one-thread session.run benchmark of version 1 against the served version."""

import numpy as np

from bench import trust_cost


def test_it_times_every_graph_at_every_batch_and_counts_their_nodes():
    models = trust_cost.graphs("mnist-convnet", "HEAD")
    assert list(models)[0] == "v1" and len(models) == 3  # version 1, the served one at HEAD, the served one now
    sessions = {label: trust_cost.one_thread_session(data) for label, data in models.items()}
    pictures = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    results = trust_cost.measure(sessions, pictures, [1, 4], rounds=1)
    assert set(results) == {1, 4}
    for row in results.values():
        assert set(row) == set(models) and all(r["cpu_us"] > 0 and r["wall_us"] > 0 for r in row.values())
    nodes = {label: trust_cost.node_count(data) for label, data in models.items()}
    assert nodes["v1"] < min(n for label, n in nodes.items() if label != "v1")  # the typicality adds nodes
