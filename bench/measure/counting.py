"""Instruction counts through a peer under valgrind (bench/measure/peer.py, bench/measure/callgrind.py), case by
case: what ``run --metric instructions`` and ``ab --metric instructions`` count."""

from __future__ import annotations

from .peer import Peer, PeerError


def window_calls(case) -> int:
    """Calls in one instruction-count window, from the case alone so that both sides of an A/B count the same
    window (the first call of a window costs more than the rest, so per-call counts of windows of different lengths
    differ by up to 1%): 20 calls for cases up to 10⁸ FLOPs or bytes — per-call counts of a 5-call window varied by
    0.15% between processes here, of a 20-call window by 0.03% — and fewer, down to 3, for larger ones."""
    work = max(case.flops(), case.bytes_moved(), 1)
    return max(3, min(20, int(2e9 / work)))


def count_cases(peer: Peer, cases, impls, timing, seed, timeout, public: bool = False):
    """Instruction counts in one peer process (under valgrind), case by case: validate and warm up as for timing,
    then one window of a few calls per implementation. Yields (case, {impl: (status, error, backend, count)}).
    ``public``: count the public methods' calls (``bench.measure.measure.bound``)."""
    info = peer.info or peer.start()
    for case in cases:
        names = [n for n in (impls or info["impls"]) if n in info["impls"]]
        counts = {}
        try:
            prep = peer.request(("prepare", case, names, timing, seed, public), timeout, f"preparing {case.key}")
        except PeerError as exc:
            yield case, {n: (exc.status, str(exc), "", None) for n in names}
            continue
        for o in prep["failed"]:
            counts[o.impl] = (o.status, o.error, o.backend, None)
        for n, r in prep["ready"].items():
            calls = window_calls(case)
            try:
                counts[n] = ("ok", "", r["backend"], peer.request(("count", n, calls), timeout, f"counting {n}"))
            except PeerError as exc:
                counts[n] = (exc.status, str(exc), r["backend"], None)
        try:
            peer.request(("release",), timeout, "releasing")
        except PeerError:
            peer.kill()
        yield case, counts


def count_suite(peer: Peer, cases, impls, timing, seed, timeout, log, public: bool = False) -> dict:
    """Every count of ``count_cases``, collected: {"info", "impls", "counts": {(case key, impl): …}}."""
    try:
        info = peer.info or peer.start()
    except PeerError as exc:
        return {"info": {"error": str(exc)}, "impls": [], "counts": {}}
    counts: dict = {}
    try:
        for i, (case, got) in enumerate(count_cases(peer, cases, impls, timing, seed, timeout, public), 1):
            counts.update({(case.key, n): v for n, v in got.items()})
            log(f"[instructions {i}/{len(cases)}] {case.key}")
    finally:
        peer.close()
    return {"info": info, "impls": info["impls"], "counts": counts}
