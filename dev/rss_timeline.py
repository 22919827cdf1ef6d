#!/usr/bin/env python3
"""Runs a command and samples its resident memory every few milliseconds, to see *when* the peak
happens (the benchmark only reports the peak). Prints the highest RSS of each 0.25 s window
when it differs from the last printed figure by more than 16 MiB, with the command's stderr lines
interleaved at their arrival time (AMUSED_LOG=debug makes the pipeline log its phases).

    python3 dev/rss_timeline.py build/amused bench -m ../shared/golden/full-configs/amused-256 \
        --random-weights --tokenizer ../shared/golden/models/tiny-a/tokenizer --no-ceilings
"""
import subprocess
import sys
import threading
import time


def rss_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def main():
    t0 = time.monotonic()
    proc = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE, text=True)
    out_lock = threading.Lock()

    def pump():
        for line in proc.stderr:
            with out_lock:
                print("%7.2f s  | %s" % (time.monotonic() - t0, line.rstrip()[:160]), flush=True)

    threading.Thread(target=pump, daemon=True).start()
    last, peak, window, window_end = 0.0, 0.0, 0.0, time.monotonic() + 0.25
    while proc.poll() is None:
        r = rss_mib(proc.pid)
        if r is not None:
            peak = max(peak, r)
            window = max(window, r)
        now = time.monotonic()
        if now >= window_end:
            if abs(window - last) > 16:
                with out_lock:
                    print("%7.2f s  RSS %7.0f MiB" % (now - t0, window), flush=True)
                last = window
            window, window_end = 0.0, now + 0.25
        time.sleep(0.005)
    print("peak sampled RSS %.0f MiB, exit %d" % (peak, proc.returncode))


if __name__ == "__main__":
    main()
