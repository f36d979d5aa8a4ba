"""The recorder's timeline rules, with a simulated clock."""

from services.recorder.capture import RecordingClock


class Sim:
    def __init__(self):
        self.t = 1000.0
        self.slept = 0.0

    def now(self):
        return self.t

    def sleep(self, s):
        self.t += s
        self.slept += s


def run(clock, stamps):
    out = []
    for ts in stamps:
        placed = clock.place(ts)
        out.append(placed)
    return out


def test_paced_pattern_on_time_is_continuous_and_paced():
    sim = Sim()
    c = RecordingClock(30, paced=True, synthetic=True, now=sim.now, sleep=sim.sleep)
    out = run(c, [i / 30 for i in range(90)])
    assert [p[0] for p in out] == list(range(90)) and all(p[1] == 0 for p in out)
    assert abs(sim.slept - 89 / 30) < 1e-9  # waited for each frame's moment


def test_paced_pattern_late_by_more_than_a_frame_skips_slots_once():
    sim = Sim()
    c = RecordingClock(30, paced=True, synthetic=True, now=sim.now, sleep=sim.sleep)
    run(c, [i / 30 for i in range(10)])
    sim.t += 3.5 / 30  # the encoder stalled: frame 10 comes 2.5 frames after its moment
    out = run(c, [i / 30 for i in range(10, 20)])
    assert out[0] == (12, 2)  # slots 10 and 11 dropped, counted; back in step with the wall clock
    assert [p[0] for p in out] == list(range(12, 22)) and all(p[1] == 0 for p in out[1:])


def test_paced_pattern_a_little_late_keeps_its_slot():
    sim = Sim()
    c = RecordingClock(30, paced=True, synthetic=True, now=sim.now, sleep=sim.sleep)
    run(c, [0.0])
    sim.t += 1 / 30 + 0.012  # woke 12 ms late: still the next slot
    assert c.place(1 / 30) == (1, 0)


def test_live_source_jitter_is_absorbed():
    sim = Sim()
    c = RecordingClock(30, paced=False, synthetic=False, now=sim.now, sleep=sim.sleep)
    jitter = [0.0, 0.012, -0.01, 0.015, -0.014, 0.004]
    out = run(c, [5000 + i / 30 + jitter[i % 6] for i in range(60)])
    assert [p[0] for p in out] == list(range(60)) and sum(p[1] for p in out) == 0


def test_live_pause_leaves_no_hole_and_a_stall_is_counted():
    sim = Sim()
    c = RecordingClock(10, paced=False, synthetic=False, now=sim.now, sleep=sim.sleep)
    run(c, [i / 10 for i in range(20)])
    c.paused(5.0)  # the display kept ticking for 5 s while paused
    assert c.place(1.9 + 5.0 + 0.1) == (20, 0)
    assert c.place(2.0 + 5.0 + 0.5) == (25, 4)  # a real stall: 2.1-2.4 never came, 4 frames missing


def test_a_faster_source_is_thinned():
    c = RecordingClock(30, paced=False, synthetic=False)
    out = run(c, [i / 60 for i in range(120)])
    kept = [p for p in out if p is not None]
    assert [p[0] for p in kept] == list(range(61)) and all(p[1] == 0 for p in kept)
