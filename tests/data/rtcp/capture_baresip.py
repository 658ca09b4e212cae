"""
Capture the RTCP a real baresip sends during a G.711 call on loopback:
baresip dials this script (a minimal SIP UAS), which answers with SDP
naming its own RTP/RTCP sockets, sends baresip RTP (one packet in 25
left out, so its RR reports loss), and keeps every RTCP datagram.
"""
import os, re, select, socket, struct, subprocess, sys, time, random
out = sys.argv[1]
work = "/tmp/rtcpcap/bs"
os.makedirs(work, exist_ok=True)
open(f"{work}/config", "w").write("""sip_listen 127.0.0.1:5090
rtp_ports 10000-10099
module_path /usr/lib/baresip/modules
module g711.so
module account.so
module menu.so
module ausine.so
module ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:4445
audio_source ausine,440
audio_player aufile,/dev/null
ausrc_srate 48000
ausrc_channels 2
rtcp_mux no
""")
open(f"{work}/accounts", "w").write("<sip:alice@127.0.0.1:5090>;regint=0;audio_codecs=PCMU/8000/1\n")
sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sip.bind(("127.0.0.1", 5099))
rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rtp.bind(("127.0.0.1", 23000))
rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rtcp.bind(("127.0.0.1", 23001))
proc = subprocess.Popen(["baresip", "-f", work], stdin=subprocess.DEVNULL, stdout=open(f"{work}/log", "w"), stderr=subprocess.STDOUT)
try:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            c = socket.create_connection(("127.0.0.1", 4445), timeout=1); break
        except OSError:
            time.sleep(0.2)
    cmd = b'{"command":"dial","params":"sip:bob@127.0.0.1:5099","token":"1"}'
    c.sendall(str(len(cmd)).encode() + b":" + cmd + b",")
    target = None
    reports = []
    seq = 0
    start = time.monotonic(); next_rtp = None
    while time.monotonic() - start < 16:
        r, _, _ = select.select([sip, rtp, rtcp], [], [], 0.005)
        for s in r:
            data, addr = s.recvfrom(4096)
            if s is sip and data.startswith(b"INVITE"):
                text = data.decode()
                head, body = text.split("\r\n\r\n", 1)
                m = re.search(r"m=audio (\d+)", body); ip = re.search(r"c=IN IP4 (\S+)", body)
                target = (ip.group(1), int(m.group(1)))
                keep = [l for l in head.split("\r\n")[1:] if l.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
                keep = [l + ";tag=uas1" if l.lower().startswith("to:") else l for l in keep]
                sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 23000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
                resp = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContact: <sip:bob@127.0.0.1:5099>\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s" % (len(sdp), sdp)
                sip.sendto(resp.encode(), addr)
                next_rtp = time.monotonic()
            elif s is rtcp:
                reports.append((0, time.monotonic() - start, data))
            elif s is rtp and len(data) >= 2 and 192 <= data[1] <= 223:
                reports.append((0, time.monotonic() - start, data))
        if target and next_rtp is not None and time.monotonic() >= next_rtp:
            if seq % 100 == 50:
                # a sender report of ours (NTP now), to baresip's RTCP port
                now = time.time() + 2208988800
                sec = int(now); frac = int((now - sec) * 2**32)
                sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0xC0FFEE, sec, frac, seq * 160, seq, seq * 160)
                rtcp.sendto(sr, (target[0], target[1] + 1))
                reports.append((1, time.monotonic() - start, sr))
            if seq % 25 != 24:
                rtp.sendto(struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0xC0FFEE) + b"\xff" * 160, target)
            seq += 1; next_rtp += 0.02
finally:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill(); proc.wait(5)
print(len(reports), "RTCP datagrams", [(d, round(t, 3), r[1], len(r)) for d, t, r in reports])
with open(out, "wb") as f:
    # per datagram: direction (0 from baresip, 1 ours to it), seconds since
    # the start (double), length, the datagram
    for d, t, r in reports:
        f.write(struct.pack("!BdH", d, t, len(r)) + r)
