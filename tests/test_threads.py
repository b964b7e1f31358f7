"""lossmix.utils.threads and the benchmark runner's sharing of cores among the runs in progress."""
import json
import os

import pytest
import torch

from lossmix import benchmark as bm
from lossmix.utils.threads import ThreadCountFollower, thread_shares, write_thread_count

from .test_benchmark import _protocol


@pytest.mark.parametrize("cores, running, shares", [
    (2, 0, []), (2, 1, [2]), (2, 2, [1, 1]), (2, 3, [1, 1, 1]), (3, 2, [2, 1]), (16, 3, [6, 5, 5]), (1, 1, [1]),
])
def test_thread_shares(cores, running, shares):
    assert thread_shares(cores, running) == shares


def test_thread_shares_refuses_no_cores():
    with pytest.raises(ValueError, match="cores >= 1"):
        thread_shares(0, 1)


def test_follower_applies_a_changed_count_once(tmp_path):
    path = str(tmp_path / "threads")
    follower = ThreadCountFollower(path)
    before = torch.get_num_threads()
    try:
        assert follower.poll() is None  # no file yet: nothing to do
        want = 2 if before != 2 else 1
        write_thread_count(path, want)
        assert follower.poll() == want and torch.get_num_threads() == want
        assert follower.poll() is None  # unchanged file: not read again
        (tmp_path / "threads").write_text("zero\n")
        assert follower.poll() is None and torch.get_num_threads() == want  # bad advice is ignored
    finally:
        torch.set_num_threads(before)


# A fake train_net: "short" ends at once; "long" reads its thread file (named in the environment) until the
# runner has handed it the core the short one left, then records what it saw.
FAKE = """
import os, sys, time
out = sys.argv[sys.argv.index('OUTPUT_DIR') + 1]
seen = [os.environ['OMP_NUM_THREADS']]
if 'long' in out:
    for _ in range(200):
        time.sleep(0.05)
        with open(os.environ['LOSSMIX_THREADS_FILE']) as f:
            n = f.read().strip()
        if n != seen[-1]:
            seen.append(n)
        if n == '2':
            break
with open(os.path.join(out, 'seen'), 'w') as f:
    f.write(' '.join(seen))
"""


def test_runner_hands_the_idle_core_to_the_run_left_alone(tmp_path):
    fake = tmp_path / "fake_train_net.py"
    fake.write_text(FAKE)
    proto = bm.load_protocol(_protocol(tmp_path, "SEEDS: [0]\nENTRIES:\n  - {NAME: short, CONFIG: CONFIG_FILE}\n"
                                                 "  - {NAME: long, CONFIG: CONFIG_FILE}\n", name="p"))
    out = str(tmp_path / "out")
    bm.execute(bm.plan(proto, out), jobs=2, cores=2, train_net=str(fake), log=lambda _: None)
    runs = {name: os.path.join(out, "p", name, "seed0") for name in ("short", "long")}
    assert open(os.path.join(runs["short"], "seen")).read() == "1"
    assert open(os.path.join(runs["long"], "seen")).read() == "1 2"
    threads = {name: json.load(open(os.path.join(d, "benchmark.json")))["attempts"][0]["threads"]
               for name, d in runs.items()}
    assert threads == {"short": [1], "long": [1, 2]}


def test_fixed_threads_never_change(tmp_path):
    fake = tmp_path / "fake_train_net.py"
    fake.write_text(FAKE.replace("range(200)", "range(10)"))
    proto = bm.load_protocol(_protocol(tmp_path, "SEEDS: [0]\nENTRIES:\n  - {NAME: short, CONFIG: CONFIG_FILE}\n"
                                                 "  - {NAME: long, CONFIG: CONFIG_FILE}\n", name="p"))
    out = str(tmp_path / "out")
    bm.execute(bm.plan(proto, out), jobs=2, threads=1, cores=2, train_net=str(fake), log=lambda _: None)
    assert open(os.path.join(out, "p", "long", "seed0", "seen")).read() == "1"


def test_an_entry_with_threads_keeps_its_count_and_the_others_share_what_it_leaves(tmp_path):
    fake = tmp_path / "fake_train_net.py"
    fake.write_text(FAKE.replace("range(200)", "range(10)"))
    proto = bm.load_protocol(_protocol(tmp_path, "SEEDS: [0]\nENTRIES:\n  - {NAME: short, CONFIG: CONFIG_FILE}\n"
                                                 "  - {NAME: long, CONFIG: CONFIG_FILE, THREADS: 2}\n", name="p"))
    out = str(tmp_path / "out")
    bm.execute(bm.plan(proto, out), jobs=2, cores=3, train_net=str(fake), log=lambda _: None)
    seen = {n: open(os.path.join(out, "p", n, "seed0", "seen")).read() for n in ("short", "long")}
    assert seen == {"short": "1", "long": "2"}  # 3 cores: 2 fixed, the 1 they leave to the other (unfixed: [2, 1])
    with pytest.raises(bm.ProtocolError, match=r"THREADS must be an int >= 1"):
        bm.load_protocol(_protocol(tmp_path, "SEEDS: [0]\nENTRIES:\n  - {NAME: a, CONFIG: CONFIG_FILE, THREADS: 0}\n",
                                   name="q"))


def test_the_training_loop_follows_the_thread_file(tmp_path, monkeypatch):
    """A Trainer applies the count in $LOSSMIX_THREADS_FILE at its next iteration."""
    import itertools

    from lossmix.engine.trainer import Trainer
    from lossmix.utils import threads as threads_module

    class OneParameter:
        trainable = torch.nn.Linear(1, 1)
        seen = []

        def losses(self, batch, iteration):
            self.seen.append(torch.get_num_threads())
            return {"loss": self.trainable.weight.square().sum()}

        def after_step(self, iteration):
            return {}

    class NoCheckpoints:
        def save(self, *args, **kwargs):
            pass

    recipe = OneParameter()
    optimizer = torch.optim.SGD(recipe.trainable.parameters(), lr=0.1)
    path = tmp_path / "threads"
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    write_thread_count(str(path), want)
    monkeypatch.setenv(threads_module.THREADS_FILE_ENV, str(path))
    try:
        Trainer(recipe=recipe, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0),
                data_loader=itertools.repeat(None), checkpointer=NoCheckpoints(), device=torch.device("cpu"),
                max_iter=2, log_period=0).train()
    finally:
        torch.set_num_threads(before)
    assert recipe.seen == [want, want]
