"""The local stack's port draw (moodloop/local/s3server.py free_port): a port found free is bound
some seconds later, so it is drawn below the kernel's ephemeral range, where no outgoing connection
of the machine can take it meanwhile (a stack test's port taken that way fails its start)."""

from __future__ import annotations

from moodloop.local import s3server


def test_ports_are_drawn_below_the_ephemeral_range():
    first_ephemeral = s3server._first_ephemeral_port()
    for _ in range(50):
        port = s3server.free_port()
        # (not bound here to prove it free: another test of the suite may be starting on it)
        assert port >= 10000 and port + 10000 < first_ephemeral, (port, first_ephemeral)


def test_a_kernel_range_that_starts_low_falls_back_to_the_wide_draw(tmp_path, monkeypatch):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("15000\t60999\n")
    monkeypatch.setattr(s3server, "EPHEMERAL_PORTS", ranges)
    assert s3server._first_ephemeral_port() == 15000
    assert all(20000 <= s3server.free_port() <= 45000 for _ in range(20))
    monkeypatch.setattr(s3server, "EPHEMERAL_PORTS", tmp_path / "missing")
    assert s3server._first_ephemeral_port() == 32768  # Linux's default
