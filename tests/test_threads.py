"""The CPU thread count is chosen by timing steps: one thread when the cores are busy, every core when idle."""

import pytest
import torch

from fedsim.engine.threads import ThreadChooser


class FakeClock:
    """Each step takes `cost[threads]` seconds of this clock."""

    def __init__(self, cost):
        self.cost, self.now = cost, 0.0

    def __call__(self):
        return self.now

    def spend(self):
        self.now += self.cost[torch.get_num_threads()]


def play(chooser, clock, steps):
    used = []
    for _ in range(steps):
        with chooser.step():
            used.append(torch.get_num_threads())
            clock.spend()
    return used


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_busy_cores_make_it_choose_one_thread_and_idle_cores_every_core():
    busy = FakeClock({1: 1.0, 2: 5.0})  # another process holds a core: two threads wait on each other
    chooser = ThreadChooser(cores=2, warmup=2, probe_steps=3, recheck_every=50, clock=busy)
    used = play(chooser, busy, 20)
    assert used[:2] == [1, 1] and used[2:8] == [1, 2] * 3  # warm-up, then the counts alternate
    assert used[8:] == [1] * 12 and chooser.decisions == [(8, 1)]
    idle = FakeClock({1: 1.0, 2: 0.5})
    chooser = ThreadChooser(cores=2, warmup=2, probe_steps=3, recheck_every=50, clock=idle)
    assert play(chooser, idle, 20)[8:] == [2] * 12


def test_rechecks_follow_a_change_of_load_back_off_while_it_stays_and_ignore_small_gains():
    clock = FakeClock({1: 1.0, 2: 0.5})
    chooser = ThreadChooser(cores=2, warmup=0, probe_steps=1, recheck_every=10, clock=clock)
    play(chooser, clock, 2)
    assert chooser.current == 2 and chooser.next_probe == 12
    clock.cost = {1: 1.0, 2: 4.0}  # the machine got busy
    used = play(chooser, clock, 12)
    assert used[-2:] == [1, 2] and chooser.current == 1  # the probe at steps 12-13 found it
    assert chooser.next_probe == 14 + 10  # a change: the next probe comes after the first interval
    play(chooser, clock, 12)  # the probe at 24 agrees: the interval doubles
    assert chooser.next_probe == 26 + 20
    clock.cost = {1: 1.0, 2: 0.95}  # idle again but hardly faster: within the margin, no switch
    play(chooser, clock, 30)
    assert chooser.current == 1


def test_a_fixed_count_is_never_changed():
    clock = FakeClock({1: 9.0, 2: 1.0, 3: 1.0})
    chooser = ThreadChooser(fixed=1, cores=2, clock=clock)
    chooser.apply()
    assert play(chooser, clock, 10) == [1] * 10 and not chooser.adaptive and chooser.describe() == 1
