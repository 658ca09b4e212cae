/*
 * The data plane of bench/workers_scale.py: the RTP of N calls both ways
 * through already set-up tunnels (plaintext, DATAGRAM frames) and the
 * operator side's UDP sockets, or straight between UDP sockets (the
 * baseline), with one-way latency histograms.  Compiled by the benchmark
 * at run time (cc -O2); the Python side sets up the tunnels and calls and
 * hands the sockets on (inherited descriptors) with a description on
 * standard input:
 *
 *   path relay|direct   duration SECONDS   tick_us US   phase ID
 *   seq 0|1   base FIRST_SEQUENCE   drain SECONDS
 *   sessions S
 *   TUNNEL_FD OP_FD LAN_FD OP_PORT LAN_PORT PENDING_HEX|-      (S lines)
 *   calls N
 *   SESSION CHANNEL RELAY_PORT                                  (N lines)
 *
 * Call i's packet number seq goes out at t0 + (seq * N + i) / (50 N) s,
 * batched per tick (all that is due when the tick fires): forward into its
 * session's tunnel (relay; one write per tunnel per tick) or from the
 * session's LAN socket to its operator-side socket (direct); return from
 * the operator-side socket to the call's relay port (relay) or to the LAN
 * socket (direct), with sendmmsg.  Every packet is 172 bytes: an RTP header,
 * then call, sequence, phase and CLOCK_MONOTONIC nanoseconds of sending.
 * Receiving (epoll, recvmmsg, the tunnels' frames) records each packet's
 * one-way latency in a histogram: 1 us bins up to 100 ms, 1 ms bins up to
 * 10 s.  PINGs in the tunnels are answered with PONGs; any other frame that
 * is not a DATAGRAM is kept, whole, and handed back to Python with the
 * tunnel's unread partial frame (hex) so its parser goes on where this left.
 *
 * Output: one JSON object on standard output.  Errors: one line on standard
 * error and exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define SIZE 172
#define BATCH 64
#define MAX_SESSIONS 256
#define RBUF (4 << 20)
#define MAX_WBUF (64 << 20)
#define FINE 100000   /* 1 us bins below 100 ms */
#define COARSE 9900   /* then 1 ms bins up to 10 s */
#define NBINS (FINE + COARSE + 1)

static void die(const char *what) {
    fprintf(stderr, "dataplane: %s: %s\n", what, errno ? strerror(errno) : "bad input");
    exit(1);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

struct buf {
    unsigned char *p;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) die("out of memory");
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

/* a batch of datagrams for one socket, sent with sendmmsg */
struct queue {
    int fd;
    int n;
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in to[BATCH];
    unsigned char data[BATCH][SIZE];
};

struct session {
    int tun, op, lan;
    struct sockaddr_in op_addr, lan_addr;
    struct buf in, out, kept;
    int want_write;
    struct queue fwd, ret; /* fwd: from lan (direct); ret: from op */
};

struct call {
    int s;
    uint32_t channel;
    struct sockaddr_in relay;
};

static int relay_path, seq_flag, nsessions, ncalls, ep;
static uint32_t phase, base;
static long per_call;
static struct session *S;
static struct call *C;
static unsigned char *seen[2];
static uint32_t *hist[2];
static long long ticks_missed, late_ticks;
static int64_t tick_late_max;
static long long sent[2], received[2], dups[2], stale, send_errors[2], pings, other_frames, write_drops;
static int64_t max_lat[2];
/* the largest latency of the packets sent in each 100 ms of the phase, by session */
#define SLOT_NS 100000000
static int64_t t_start, *slot_max[2];
static long nslots;

static void record(int dir, const unsigned char *stamp, int64_t now) {
    uint32_t call, seq, ph;
    uint64_t t;
    memcpy(&call, stamp, 4);
    memcpy(&seq, stamp + 4, 4);
    memcpy(&ph, stamp + 8, 4);
    memcpy(&t, stamp + 12, 8);
    call = ntohl(call);
    seq = ntohl(seq);
    if (ntohl(ph) != phase || call >= (uint32_t)ncalls || seq >= (uint32_t)per_call) {
        stale++;
        return;
    }
    size_t i = (size_t)call * per_call + seq;
    if (seen[dir][i]) {
        dups[dir]++;
        return;
    }
    seen[dir][i] = 1;
    received[dir]++;
    int64_t lat = now - (int64_t)be64toh(t);
    if (lat < 0) lat = 0;
    if (lat > max_lat[dir]) max_lat[dir] = lat;
    int64_t slot = ((int64_t)be64toh(t) - t_start) / SLOT_NS;
    int64_t *slots = slot_max[dir] + (size_t)C[call].s * nslots;
    if (slot >= 0 && slot < nslots && lat > slots[slot]) slots[slot] = lat;
    int64_t us = lat / 1000;
    size_t bin = us < FINE ? (size_t)us : (us / 1000 - 100 < COARSE ? FINE + (size_t)(us / 1000 - 100) : NBINS - 1);
    hist[dir][bin]++;
}

static void fill(unsigned char *p, int ret, uint32_t call, uint32_t seq, int64_t now) {
    uint16_t s16 = htons((uint16_t)seq);
    uint32_t ts = htonl(seq * 160), ssrc = htonl(ret ? 0x10000 + call : call + 1);
    uint32_t c = htonl(call), q = htonl(seq), ph = htonl(phase);
    uint64_t t = htobe64((uint64_t)now);
    p[0] = 0x80;
    p[1] = 0;
    memcpy(p + 2, &s16, 2);
    memcpy(p + 4, &ts, 4);
    memcpy(p + 8, &ssrc, 4);
    memcpy(p + 12, &c, 4);
    memcpy(p + 16, &q, 4);
    memcpy(p + 20, &ph, 4);
    memcpy(p + 24, &t, 8);
}

static void flush_queue(struct queue *q, int dir) {
    int off = 0;
    while (off < q->n) {
        int r = sendmmsg(q->fd, q->m + off, q->n - off, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            send_errors[dir]++; /* this datagram is lost: go on with the next */
            off++;
        } else {
            off += r;
        }
    }
    q->n = 0;
}

static unsigned char *queue_slot(struct queue *q, int dir, const struct sockaddr_in *to) {
    if (q->n == BATCH) flush_queue(q, dir);
    int i = q->n++;
    q->to[i] = *to;
    q->iov[i].iov_base = q->data[i];
    q->iov[i].iov_len = SIZE;
    memset(&q->m[i], 0, sizeof q->m[i]);
    q->m[i].msg_hdr.msg_name = &q->to[i];
    q->m[i].msg_hdr.msg_namelen = sizeof q->to[i];
    q->m[i].msg_hdr.msg_iov = &q->iov[i];
    q->m[i].msg_hdr.msg_iovlen = 1;
    return q->data[i];
}

static void set_events(struct session *s, int want_write) {
    if (s->want_write == want_write) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_write ? EPOLLOUT : 0), .data.u64 = (uint64_t)(s - S) * 4 + 0};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s->tun, &ev) < 0) die("epoll_ctl");
    s->want_write = want_write;
}

static void write_tunnel(struct session *s) {
    size_t off = 0;
    while (off < s->out.len) {
        ssize_t r = write(s->tun, s->out.p + off, s->out.len - off);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            die("writing to a tunnel");
        }
        off += (size_t)r;
    }
    memmove(s->out.p, s->out.p + off, s->out.len - off);
    s->out.len -= off;
    set_events(s, s->out.len > 0);
}

static void parse_frames(struct session *s, int64_t now) {
    size_t pos = 0;
    unsigned char *b = s->in.p;
    while (s->in.len - pos >= 8) {
        unsigned type = b[pos], flags = b[pos + 1];
        size_t len = (size_t)b[pos + 6] << 8 | b[pos + 7];
        if (s->in.len - pos - 8 < len) break;
        size_t body = pos + 8;
        if (type == 3) {
            size_t at = body + ((flags & 2) ? 4 : 0) + 12;
            if (at + 20 <= body + len) record(1, b + at, now);
            else stale++;
        } else if (type == 5) {
            unsigned char h[8] = {6, 0, 0, 0, 0, 0, b[pos + 6], b[pos + 7]};
            put(&s->out, h, 8);
            put(&s->out, b + body, len);
            pings++;
        } else {
            put(&s->kept, b + pos, 8 + len);
            other_frames++;
        }
        pos = body + len;
    }
    memmove(b, b + pos, s->in.len - pos);
    s->in.len -= pos;
}

static void read_tunnel(struct session *s) {
    for (;;) {
        if (s->in.len == s->in.cap) die("a frame larger than the read buffer");
        ssize_t r = read(s->tun, s->in.p + s->in.len, s->in.cap - s->in.len);
        if (r == 0) {
            errno = 0;
            die("the contact point closed a tunnel");
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            die("reading a tunnel");
        }
        s->in.len += (size_t)r;
        parse_frames(s, now_ns());
    }
}

static void read_udp(int fd, int dir) {
    static unsigned char data[BATCH][2048];
    static struct mmsghdr m[BATCH];
    static struct iovec iov[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = data[i];
            iov[i].iov_len = sizeof data[i];
            memset(&m[i].msg_hdr, 0, sizeof m[i].msg_hdr);
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(fd, m, BATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            die("reading a UDP socket");
        }
        int64_t now = now_ns();
        for (int i = 0; i < r; i++) {
            if (m[i].msg_len == SIZE && data[i][0] == 0x80) record(dir, data[i] + 12, now);
        }
        if (r < BATCH) return;
    }
}

static void hex_out(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
}

static int unhex(int c) {
    return c <= '9' ? c - '0' : (c | 32) - 'a' + 10;
}

int main(void) {
    char path[16];
    double duration, drain;
    long tick_us;
    if (scanf(" path %15s duration %lf tick_us %ld phase %u seq %d base %u drain %lf sessions %d", path, &duration,
              &tick_us, &phase, &seq_flag, &base, &drain, &nsessions) != 8 ||
        nsessions < 1 || nsessions > MAX_SESSIONS || duration <= 0 || tick_us < 50)
        die("the description");
    relay_path = strcmp(path, "relay") == 0;
    S = calloc((size_t)nsessions, sizeof *S);
    static char pending[2 * RBUF + 2];
    for (int i = 0; i < nsessions; i++) {
        struct session *s = &S[i];
        int op_port, lan_port;
        if (scanf("%d %d %d %d %d %s", &s->tun, &s->op, &s->lan, &op_port, &lan_port, pending) != 6) die("a session");
        s->op_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(op_port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        s->lan_addr = s->op_addr;
        s->lan_addr.sin_port = htons(lan_port);
        s->in.p = malloc(RBUF);
        s->in.cap = RBUF;
        if (strcmp(pending, "-") != 0) {
            size_t n = strlen(pending) / 2;
            for (size_t k = 0; k < n; k++) s->in.p[k] = (unsigned char)(unhex(pending[2 * k]) << 4 | unhex(pending[2 * k + 1]));
            s->in.len = n;
        }
        s->fwd.fd = s->lan;
        s->ret.fd = s->op;
    }
    if (scanf(" calls %d", &ncalls) != 1 || ncalls < 1) die("the calls");
    C = calloc((size_t)ncalls, sizeof *C);
    for (int i = 0; i < ncalls; i++) {
        int port;
        if (scanf("%d %u %d", &C[i].s, &C[i].channel, &port) != 3 || C[i].s < 0 || C[i].s >= nsessions) die("a call");
        C[i].relay = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    }
    double rate = ncalls / 0.02;
    long long total = (long long)(duration * rate);
    per_call = (long)(duration / 0.02) + 2;
    for (int d = 0; d < 2; d++) {
        seen[d] = calloc((size_t)ncalls * per_call, 1);
        hist[d] = calloc(NBINS, sizeof **hist);
        nslots = (long)(duration * 10) + 1;
        slot_max[d] = calloc((size_t)nslots * nsessions, sizeof **slot_max);
        if (!seen[d] || !hist[d] || !slot_max[d]) die("out of memory");
    }

    ep = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {.it_interval = {0, tick_us * 1000}, .it_value = {0, tick_us * 1000}};
    if (ep < 0 || tfd < 0) die("epoll or timerfd");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)-1};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    for (int i = 0; i < nsessions; i++) {
        /* data: session * 4 + 0 tunnel, 1 op, 2 lan */
        int fds[3] = {S[i].tun, S[i].op, S[i].lan};
        for (int k = 0; k < 3; k++) {
            ev.events = EPOLLIN;
            ev.data.u64 = (uint64_t)i * 4 + k;
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[k], &ev) < 0 && errno != EEXIST) die("epoll_ctl add");
        }
        /* the description's pending bytes: frames read before the hand-over */
        parse_frames(&S[i], now_ns());
    }

    double cpu0 = cpu_s();
    int64_t t0 = t_start = now_ns(), end = t0 + (int64_t)(duration * 1e9), stop = end + (int64_t)(drain * 1e9);
    if (timerfd_settime(tfd, 0, &its, NULL) < 0) die("timerfd");
    struct epoll_event evs[256];
    unsigned char frame_head[12];
    for (;;) {
        int64_t now = now_ns();
        if (now >= stop) break;
        int timeout = now < end ? -1 : (int)((stop - now) / 1000000) + 1;
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < n; e++) {
            uint64_t u = evs[e].data.u64;
            if (u == (uint64_t)-1) {
                uint64_t ticks = 0;
                if (read(tfd, &ticks, 8) < 0) { /* nothing: a spurious wake-up */ }
                now = now_ns();
                if (ticks > 1) ticks_missed += (long long)ticks - 1;
                /* how late this wake-up is after the tick it serves */
                int64_t late = (now - t0) % (tick_us * 1000) + (ticks > 1 ? (int64_t)(ticks - 1) * tick_us * 1000 : 0);
                if (late > tick_late_max) tick_late_max = late;
                if (late > 2000000) late_ticks++;
                if (now >= end) continue;
                long long due = (long long)((double)(now - t0) * rate / 1e9) + 1;
                if (due > total) due = total;
                for (long long k = sent[0]; k < due; k++) {
                    uint32_t call = (uint32_t)(k % ncalls), seq = (uint32_t)(k / ncalls);
                    struct session *s = &S[C[call].s];
                    if (relay_path) {
                        unsigned char pkt[SIZE] = {0};
                        uint32_t ch = htonl(C[call].channel), sq = htonl(base + seq);
                        uint16_t len = htons((uint16_t)(SIZE + (seq_flag ? 4 : 0)));
                        frame_head[0] = 3;
                        frame_head[1] = seq_flag ? 2 : 0;
                        memcpy(frame_head + 2, &ch, 4);
                        memcpy(frame_head + 6, &len, 2);
                        memcpy(frame_head + 8, &sq, 4);
                        if (s->out.len > MAX_WBUF) {
                            write_drops++;
                            continue;
                        }
                        put(&s->out, frame_head, seq_flag ? 12 : 8);
                        fill(pkt, 0, call, seq, now);
                        put(&s->out, pkt, SIZE);
                    } else {
                        fill(queue_slot(&s->fwd, 0, &s->op_addr), 0, call, seq, now);
                    }
                }
                for (long long k = sent[1]; k < due; k++) {
                    uint32_t call = (uint32_t)(k % ncalls), seq = (uint32_t)(k / ncalls);
                    struct session *s = &S[C[call].s];
                    fill(queue_slot(&s->ret, 1, relay_path ? &C[call].relay : &s->lan_addr), 1, call, seq, now);
                }
                sent[0] = sent[1] = due;
                for (int i = 0; i < nsessions; i++) {
                    if (S[i].fwd.n) flush_queue(&S[i].fwd, 0);
                    if (S[i].ret.n) flush_queue(&S[i].ret, 1);
                    if (S[i].out.len && !S[i].want_write) write_tunnel(&S[i]);
                }
                continue;
            }
            struct session *s = &S[u / 4];
            switch (u % 4) {
            case 0:
                if (evs[e].events & EPOLLIN) read_tunnel(s);
                if (s->out.len && ((evs[e].events & EPOLLOUT) || !s->want_write)) write_tunnel(s);
                break;
            case 1:
                read_udp(s->op, 0);
                break;
            case 2:
                read_udp(s->lan, 1);
                break;
            }
        }
    }
    double cpu = cpu_s() - cpu0;
    int64_t wall = now_ns() - t0;
    /* what is still to write (PONGs), within 2 s */
    int64_t give_up = now_ns() + 2000000000;
    for (int i = 0; i < nsessions; i++) {
        while (S[i].out.len && now_ns() < give_up) {
            write_tunnel(&S[i]);
            if (S[i].out.len) usleep(1000);
        }
        if (S[i].out.len) {
            errno = 0;
            die("a tunnel would not take what was left to write within 2 s");
        }
    }
    printf("{\"path\": \"%s\", \"calls\": %d, \"wall\": %.6f, \"cpu\": %.6f, \"stale\": %lld, \"pings\": %lld, \"other_frames\": %lld,"
           " \"write_drops\": %lld, \"ticks_missed\": %lld, \"late_ticks\": %lld, \"tick_late_max_us\": %lld,\n",
           path, ncalls, wall / 1e9, cpu, stale, pings, other_frames, write_drops, ticks_missed, late_ticks,
           (long long)(tick_late_max / 1000));
    for (int d = 0; d < 2; d++) {
        printf(" \"%s\": {\"sent\": %lld, \"received\": %lld, \"dups\": %lld, \"send_errors\": %lld, \"max_us\": %.1f, \"hist\": [",
               d ? "return" : "forward", sent[d], received[d], dups[d], send_errors[d], max_lat[d] / 1e3);
        int first = 1;
        for (size_t b = 0; b < NBINS; b++) {
            if (!hist[d][b]) continue;
            /* each bin as [its upper bound in us, count] */
            long long upper = b < FINE ? (long long)b + 1 : (long long)(b - FINE + 101) * 1000;
            printf("%s[%lld, %u]", first ? "" : ", ", upper, hist[d][b]);
            first = 0;
        }
        printf("], \"slot_max_us\": [");
        for (int i = 0; i < nsessions; i++) {
            printf("%s[", i ? ", " : "");
            for (long k = 0; k < nslots; k++) printf("%s%lld", k ? ", " : "", (long long)(slot_max[d][(size_t)i * nslots + k] / 1000));
            printf("]");
        }
        printf("]},\n");
    }
    printf(" \"rest\": [");
    for (int i = 0; i < nsessions; i++) {
        printf("%s\"", i ? ", " : "");
        hex_out(S[i].kept.p, S[i].kept.len);
        hex_out(S[i].in.p, S[i].in.len);
        printf("\"");
    }
    printf("]}\n");
    return 0;
}
