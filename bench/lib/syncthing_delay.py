#!/usr/bin/env python3
"""Syncthing's propagation delay on the writer of bench/watch.sh (issue 3).

Two local Syncthing instances (Debian's package, default folder settings: file watcher on with
its default 10 s delay) share one folder, A send-receive, B receive-only. bench/lib/writer.py
writes small files into A at RATE changes/s for SECONDS; an observer lists B's folder every 5 ms
and records when each file first appears there (Syncthing writes to a temporary name and
renames, so a file that is listed is complete). Prints one CSV line per rate:
  rate,written,arrived,p50_ms,p99_ms,max_ms
Only what a two-instance setup without network needs is configured (addresses on 127.0.0.1,
discovery, relays, NAT, usage reports and upgrades off); the folder keeps Syncthing's defaults.

usage: syncthing_delay.py WORKDIR SECONDS RATE... [--watcher-delay S]
"""
import os
import subprocess
import sys
import threading
import time
import urllib.request
import json
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))


def generate(home):
    r = subprocess.run(
        ["syncthing", "generate", f"--home={home}", "--no-default-folder", "--skip-port-probing"],
        capture_output=True, text=True, check=True,
    )
    out = r.stdout + r.stderr
    for line in out.splitlines():
        if "Device ID:" in line:
            return line.split("Device ID:")[1].strip()
    raise SystemExit(f"no device id from syncthing generate: {out}")


def configure(home, gui_port, listen_port, me, peer, peer_port, folder, ftype, delay):
    path = os.path.join(home, "config.xml")
    tree = ET.parse(path)
    root = tree.getroot()
    gui = root.find("gui")
    gui.find("address").text = f"127.0.0.1:{gui_port}"
    key = gui.find("apikey")
    if key is None:
        key = ET.SubElement(gui, "apikey")
    key.text = "bench-key"
    opts = root.find("options")
    for tag, val in [
        ("listenAddress", f"tcp://127.0.0.1:{listen_port}"),
        ("globalAnnounceEnabled", "false"),
        ("localAnnounceEnabled", "false"),
        ("relaysEnabled", "false"),
        ("natEnabled", "false"),
        ("urAccepted", "-1"),
        ("autoUpgradeIntervalH", "0"),
        ("startBrowser", "false"),
        ("crashReportingEnabled", "false"),
    ]:
        for el in opts.findall(tag):
            opts.remove(el)
        ET.SubElement(opts, tag).text = val
    dev = ET.SubElement(root, "device", id=peer, name="peer", compression="metadata",
                        introducer="false")
    ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{peer_port}"
    f = ET.SubElement(root, "folder", id="bench", label="bench", path=folder, type=ftype,
                      rescanIntervalS="3600", fsWatcherEnabled="true",
                      fsWatcherDelayS=str(delay))
    ET.SubElement(f, "device", id=me)
    ET.SubElement(f, "device", id=peer)
    tree.write(path)


def api(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"X-API-Key": "bench-key"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def wait_for(cond, timeout, what):
    t = time.time()
    while time.time() - t < timeout:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    args = sys.argv[1:]
    delay = 10
    if "--watcher-delay" in args:
        i = args.index("--watcher-delay")
        delay = int(args[i + 1])
        del args[i:i + 2]
    work, secs, rates = args[0], float(args[1]), [int(r) for r in args[2:]]
    os.makedirs(work, exist_ok=True)
    procs = []
    try:
        homes = [os.path.join(work, "st-a"), os.path.join(work, "st-b")]
        folders = [os.path.join(work, "sync-a"), os.path.join(work, "sync-b")]
        subprocess.run(["rm", "-rf", *homes, *folders], check=True)
        for d in folders:
            os.makedirs(d)
        ids = [generate(h) for h in homes]
        ports = [(28384, 22001), (28385, 22002)]
        for i in range(2):
            j = 1 - i
            configure(homes[i], ports[i][0], ports[i][1], ids[i], ids[j], ports[j][1],
                      folders[i], "sendreceive" if i == 0 else "receiveonly", delay)
        for h in homes:
            log = open(os.path.join(h, "log.txt"), "w")
            procs.append(subprocess.Popen(
                ["syncthing", "serve", f"--home={h}", "--no-browser", "--no-restart",
                 "--no-upgrade"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1"}))
        wait_for(lambda: api(ports[0][0], "/rest/system/connections")["connections"][ids[1]]
                 ["connected"], 120, "the instances to connect")
        wait_for(lambda: api(ports[1][0], "/rest/db/status?folder=bench")["state"] == "idle",
                 120, "the folder to be idle")
        start = 0
        for rate in rates:
            seen = {}
            stop = threading.Event()

            def observe():
                while not stop.is_set():
                    now = time.time_ns()
                    try:
                        names = os.listdir(folders[1])
                    except FileNotFoundError:
                        names = []
                    for n in names:
                        if n.startswith("f-") and n not in seen:
                            seen[n] = now
                    time.sleep(0.005)

            obs = threading.Thread(target=observe)
            obs.start()
            wlog = os.path.join(work, f"st-writes-{rate}.log")
            if os.path.exists(wlog):
                os.remove(wlog)
            out = subprocess.run(["python3", os.path.join(HERE, "writer.py"), folders[0],
                                  str(rate), str(secs), wlog, str(start)],
                                 capture_output=True, text=True, check=True).stdout
            start = int(out.strip().splitlines()[-1])
            writes = {}
            for line in open(wlog):
                n, t = line.split("\t")
                writes[n] = int(t)
            t_end = time.time()
            while time.time() - t_end < 60 and not all(n in seen for n in writes):
                time.sleep(0.2)
            stop.set()
            obs.join()
            delays = sorted((seen[n] - t) / 1e6 for n, t in writes.items() if n in seen)
            q = lambda p: delays[round((len(delays) - 1) * p)] if delays else float("nan")
            print(f"{rate},{len(writes)},{len(delays)},{q(0.5):.1f},{q(0.99):.1f},"
                  f"{delays[-1] if delays else float('nan'):.1f}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
