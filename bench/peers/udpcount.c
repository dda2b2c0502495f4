/* Counts the UDP datagrams and payload bytes a process sends, for peers that keep no such
 * counters themselves (kinship's protocol runs in Rust and its stats() has no packets-out or
 * bytes-out). Loaded with LD_PRELOAD into one node process by bench/peers/run.py; it wraps the
 * libc send calls, passes every call through unchanged, and adds to two counters when the
 * socket is an AF_INET/AF_INET6 SOCK_DGRAM one and the call succeeded. The node script reads the
 * counters through ctypes (udpcount_datagrams(), udpcount_bytes()).
 *
 * Bytes are the UDP payload, as swimthor's own bytes_out counts them: no IP or UDP headers.
 *
 *     cc -O2 -shared -fPIC -o udpcount.so udpcount.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

static uint64_t n_datagrams;
static uint64_t n_bytes;

uint64_t udpcount_datagrams(void) { return __atomic_load_n(&n_datagrams, __ATOMIC_RELAXED); }
uint64_t udpcount_bytes(void) { return __atomic_load_n(&n_bytes, __ATOMIC_RELAXED); }

static int is_udp(int fd) {
    int type = 0, domain = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_DGRAM)
        return 0;
    len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
        return 0;
    return domain == AF_INET || domain == AF_INET6;
}

static void count(int fd, ssize_t sent, uint64_t datagrams) {
    if (sent >= 0 && is_udp(fd)) {
        __atomic_fetch_add(&n_datagrams, datagrams, __ATOMIC_RELAXED);
        __atomic_fetch_add(&n_bytes, (uint64_t)sent, __ATOMIC_RELAXED);
    }
}

typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef int (*sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr,
               socklen_t addrlen) {
    static sendto_fn real;
    if (!real)
        real = (sendto_fn)dlsym(RTLD_NEXT, "sendto");
    ssize_t r = real(fd, buf, len, flags, addr, addrlen);
    count(fd, r, 1);
    return r;
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    static send_fn real;
    if (!real)
        real = (send_fn)dlsym(RTLD_NEXT, "send");
    ssize_t r = real(fd, buf, len, flags);
    count(fd, r, 1);
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static sendmsg_fn real;
    if (!real)
        real = (sendmsg_fn)dlsym(RTLD_NEXT, "sendmsg");
    ssize_t r = real(fd, msg, flags);
    count(fd, r, 1);
    return r;
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
    static sendmmsg_fn real;
    if (!real)
        real = (sendmmsg_fn)dlsym(RTLD_NEXT, "sendmmsg");
    int r = real(fd, vec, vlen, flags);
    if (r > 0 && is_udp(fd)) {
        uint64_t bytes = 0;
        for (int i = 0; i < r; i++)
            bytes += vec[i].msg_len;
        __atomic_fetch_add(&n_datagrams, (uint64_t)r, __ATOMIC_RELAXED);
        __atomic_fetch_add(&n_bytes, bytes, __ATOMIC_RELAXED);
    }
    return r;
}
