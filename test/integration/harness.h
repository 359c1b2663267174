/*
 * harness.h - shared pieces of the portrelay integration tests.
 *
 * The tests run the real binary (PORTRELAY_BIN) as a child process and talk
 * to it over loopback only (127.0.0.1 and ::1). Everything here waits on
 * events (poll, condition variables) with a deadline; deadlines only bound a
 * hang, they never stand in for readiness.
 *
 *   - a position-exact pseudo-random byte stream (xorshift64) and FNV-1a;
 *   - loopback socket helpers with deadlines;
 *   - "xfer": poll-driven full-duplex transfers over many sockets at once;
 *   - test servers (echo, greeting, reset) running in their own thread;
 *   - free external port blocks for the relay, chosen below the ephemeral range;
 *   - the relay process: spawn, log capture, ready, stop, /proc probes;
 *   - a cmocka fixture that cleans all of it up even when a test fails.
 */
#ifndef PORTRELAY_ITEST_HARNESS_H
#define PORTRELAY_ITEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

/* ---- time ---------------------------------------------------------------- */

int64_t now_ms(void);
double now_s(void);
void sleep_ms(int ms);

/* ---- byte streams ---------------------------------------------------------- */

/* A xorshift64 byte stream: byte i of the stream depends only on the seed. */
struct gen {
	uint64_t state;
	uint64_t word;
	unsigned avail;   /* bytes of word not handed out yet */
};

void gen_init(struct gen *g, uint64_t seed);
void gen_fill(struct gen *g, void *buf, size_t n);
/* Compares buf with the next n bytes of the stream: n if equal, else the index of the first difference. */
size_t gen_check(struct gen *g, const void *buf, size_t n);

#define FNV_INIT UINT64_C(0xcbf29ce484222325)
uint64_t fnv_update(uint64_t h, const void *buf, size_t n);

/* ---- loopback sockets -------------------------------------------------------- */

/* "127.0.0.1" for AF_INET, "::1" for AF_INET6. */
const char *loopback_text(int family);

/* A non-blocking, close-on-exec socket bound to loopback:port (0 = any) and listening. -1/errno. */
int sock_listen(int family, uint16_t port, int backlog);
uint16_t sock_port(int fd);
/*
 * Non-blocking connect to loopback:port, waits for it to complete. Non-blocking
 * fd, or -1/errno. A connection reset right after the handshake still returns
 * the fd (reads then see EOF): the connection was made.
 */
int sock_connect(int family, uint16_t port, int timeout_ms);
/* Starts a connect and returns at once (fd non-blocking; may still be in progress). */
int sock_connect_start(int family, uint16_t port);
/* accept with a deadline; the fd returned is non-blocking. -1/errno (ETIMEDOUT). */
int sock_accept(int lfd, int timeout_ms);
/* 0, or -1 with errno (ETIMEDOUT, EPIPE, ECONNRESET...). */
int sock_send_all(int fd, const void *buf, size_t len, int timeout_ms);
/* 0, or -1 with errno; an early EOF gives errno = ENODATA. */
int sock_recv_exact(int fd, void *buf, size_t len, int timeout_ms);
/*
 * Reads (and discards, counting) until the peer closes. Returns 0 for EOF,
 * ECONNRESET for a reset, another errno for another error, -1 on timeout.
 */
int sock_wait_close(int fd, int timeout_ms, size_t *discarded);
/* Closes with SO_LINGER 0 so the peer sees a reset. */
void sock_close_reset(int fd);
/* TCP state (TCP_ESTABLISHED...) from TCP_INFO, -1 on error. */
int sock_tcp_state(int fd);
/* One byte there and back through an echo path. 0 or -1/errno. */
int echo_roundtrip(int fd, int timeout_ms);

bool ipv6_loopback_available(void);
/* A loopback port on which nothing listens (bound, then closed). */
uint16_t dead_port(int family);

/*
 * A target whose handshake never completes: a listener with backlog 0 whose
 * accept queue holds one connection that is never accepted. Linux drops
 * further SYNs, so connects to it hang in SYN_SENT. Verified with a probe;
 * returns -1 if the trick does not work on this kernel.
 */
struct hang_target {
	int lfd;
	int fillers[16];
	int nfillers;
	uint16_t port;
};
int hang_target_open(struct hang_target *t);
void hang_target_close(struct hang_target *t);

/* ---- sockets on any local address ------------------------------------------------ */

/*
 * The whole of 127.0.0.0/8 is local, so tests can give each party its own
 * address ("127.0.0.2", or "::1"): who connected from where is then visible.
 */

/* ip (numeric IPv4 or IPv6) and port into ss; -1 if ip is not numeric. */
int addr_parse(const char *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
/* A non-blocking, close-on-exec listener on ip:port (0 = any), SO_REUSEADDR. -1/errno. */
int sock_listen_at(const char *ip, uint16_t port, int backlog);
/* Starts a connect to ip:port from src_ip (NULL: the kernel's choice); returns at once. */
int sock_connect_start_from(const char *src_ip, const char *ip, uint16_t port);
/* As sock_connect, to ip:port from src_ip (NULL: the kernel's choice). */
int sock_connect_from(const char *src_ip, const char *ip, uint16_t port, int timeout_ms);
/* The IP (no port) of fd's own end, or of its peer's; "?" on error. */
const char *sock_ip_text(int fd, bool peer, char *buf, size_t len);
uint16_t sock_peer_port(int fd);
/*
 * One line, up to and with its '\n', NUL-terminated in buf. Its length, or
 * -1 with errno: ENODATA (EOF before a line end; buf holds what came),
 * EMSGSIZE (longer than cap - 1), ETIMEDOUT, or the socket's error.
 * Reads byte by byte, so nothing after the line is taken from the socket.
 */
ssize_t sock_recv_line(int fd, char *buf, size_t cap, int timeout_ms);
/*
 * Bytes sent on fd that the socket at its other end has not read yet
 * (both ends on this host: /proc/net/tcp and tcp6). -1 if not found.
 */
long sock_peer_unread(int fd);
/* Waits until the other end of fd has read everything sent so far. 0, or -1/ETIMEDOUT. */
int sock_wait_peer_read(int fd, int timeout_ms);

/* ---- transfers ------------------------------------------------------------------ */

/*
 * One socket's transfer: send tx_len bytes of stream tx_seed, then
 * shutdown(SHUT_WR); receive exactly rx_len bytes of stream rx_seed, then EOF.
 * Both directions progress together, driven by poll.
 */
struct xfer {
	int fd;
	uint64_t tx_len, rx_len;
	uint64_t tx_done, rx_done;
	uint64_t tx_generated;       /* bytes taken from tx_gen so far */
	struct gen tx_gen, rx_gen;
	uint64_t tx_hash;           /* of the bytes sent */
	uint64_t rx_hash;           /* of the bytes received */
	unsigned char *txbuf;
	size_t txoff, txfill;
	bool send_after_eof;        /* start sending only once the peer's EOF arrived */
	bool tx_shut, rx_eof, done, failed;
	int err;
	char what[200];
};

void xfer_init(struct xfer *x, int fd, uint64_t tx_seed, uint64_t tx_len,
	       uint64_t rx_seed, uint64_t rx_len);
/* Runs all n transfers until each is done or failed, or the deadline. Returns the number not done. */
size_t xfer_run(struct xfer *xs, size_t n, int timeout_ms);
void xfer_release(struct xfer *x);
/* A description of the first unfinished transfer (for failure messages). */
const char *xfer_first_problem(struct xfer *xs, size_t n, char *buf, size_t len);

/* ---- test servers ------------------------------------------------------------------ */

enum tserver_mode {
	TSERVER_ECHO,       /* echoes, half-close aware */
	TSERVER_GREETING,   /* writes the greeting, then closes */
	TSERVER_RESET,      /* reads one byte, then closes with a reset */
};

struct tserver;

/* Takes ownership of a listening fd and serves it in a new thread. */
struct tserver *tserver_start(int lfd, enum tserver_mode mode, const char *greeting);
uint16_t tserver_port(const struct tserver *s);
unsigned tserver_accepted(struct tserver *s);
void tserver_stop(struct tserver *s);

/* ---- port blocks ---------------------------------------------------------------- */

#define PORTS_V4 1u
#define PORTS_V6 2u

/*
 * Finds width consecutive ports, each free for TCP and UDP on the loopback
 * addresses flags asks for, in [20000, 32000) and below the ephemeral range.
 */
int port_block_find(unsigned width, unsigned flags, uint16_t *base_out);
/* Random port in [lo, hi]. */
uint16_t random_port(uint16_t lo, uint16_t hi);
uint64_t test_random(void);

/* ---- the relay process --------------------------------------------------------- */

struct relay {
	pid_t pid;
	bool running;              /* spawned and not reaped */
	int status;                /* wait status once reaped */
	int err_fd, out_fd;
	pthread_t reader;
	bool reader_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char *log;                 /* stderr, NUL terminated */
	size_t log_len, log_cap;
	char *out;                 /* stdout */
	size_t out_len, out_cap;
	size_t echo_pos;           /* how much of log was echoed */
	bool pipes_closed;
	char dir[128];             /* mkdtemp directory */
	char config_path[192];
	int nofile;                /* > 0: RLIMIT_NOFILE soft = hard = nofile in the child */
	int nofile_soft;           /* > 0: only the soft RLIMIT_NOFILE, hard left as it is */
	int64_t spawned_ms;
};

void relay_init(struct relay *r);
/* Writes text to DIR/portrelay.conf; returns the path. */
const char *relay_write_config(struct relay *r, const char *text);
/* Starts PORTRELAY_BIN with args (NULL terminated; not argv[0]). 0 or -1. */
int relay_spawn(struct relay *r, const char *const *args);
/* Waits for the line with the word "ready". 0, or -1 if it exited or timed out. */
int relay_wait_ready(struct relay *r, int timeout_ms);
/* Exit code (128+signal for a signal), or -1 if still running at the deadline. */
int relay_wait_exit(struct relay *r, int timeout_ms);
/* Waits (bounded) until the relay's stdout and stderr reached EOF: the log is complete. */
void relay_wait_output_closed(struct relay *r, int timeout_ms);
/* SIGTERM, wait (bounded), SIGKILL only after the timeout (then -1). Exit code otherwise. */
int relay_stop_timeout(struct relay *r, int timeout_ms);
int relay_stop(struct relay *r);
/* Kills if running, joins the reader, removes the directory, frees. */
void relay_destroy(struct relay *r);

bool relay_log_contains(struct relay *r, const char *substr);
unsigned relay_log_count(struct relay *r, const char *substr);
bool wait_for_log(struct relay *r, const char *substr, int timeout_ms);
/* A line that contains every string of subs (NULL terminated). */
bool relay_log_line_with(struct relay *r, const char *const *subs);
bool wait_for_log_line(struct relay *r, const char *const *subs, int timeout_ms);
/* Copies of the captured streams (malloc'd). */
char *relay_log_copy(struct relay *r);
char *relay_out_copy(struct relay *r);

int relay_fd_count(struct relay *r);
/* TCP sockets in LISTEN state among the relay's descriptors, -1 on error. */
int relay_listen_count(struct relay *r);
/* A copy (malloc'd) of the first log line containing substr, without its newline; NULL if none. */
char *relay_log_line_copy(struct relay *r, const char *substr);
/* utime + stime in seconds, -1 on error. */
double relay_cpu_seconds(struct relay *r);
/* VmRSS in KiB, -1 on error. */
long relay_rss_kib(struct relay *r);

bool under_valgrind(void);
/* Scale for timeouts that bound a hang (larger under valgrind). */
int hang_scale(void);

/* ---- the cmocka fixture ---------------------------------------------------------- */

#define FX_MAX_SERVERS 16
#define FX_MAX_THREADS 8
#define FX_MAX_ALLOCS 32

struct fx {
	struct relay relay;
	bool relay_inited;
	uint16_t ext_base;         /* first external port chosen for the relay */
	int nofile;                /* passed to the relay at spawn */
	struct tserver *servers[FX_MAX_SERVERS];
	int nservers;
	pthread_t threads[FX_MAX_THREADS];
	bool thread_live[FX_MAX_THREADS];
	int nthreads;
	void *allocs[FX_MAX_ALLOCS];
	int nallocs;
	struct hang_target hang;
	bool hang_open;
};

int fx_setup(void **state);
int fx_teardown(void **state);

/* Skips the test if PORTRELAY_BIN is not set. */
void fx_require_relay(void);
/* Zeroed memory freed at teardown (after every fixture thread is joined). */
void *fx_calloc(struct fx *fx, size_t size);
/* A thread joined at teardown at the latest; returns its index. */
int fx_thread_start(struct fx *fx, void *(*fn)(void *), void *arg);
void fx_thread_join(struct fx *fx, int index);
/* A server stopped at teardown. */
struct tserver *fx_server(struct fx *fx, int lfd, enum tserver_mode mode, const char *greeting);
struct tserver *fx_echo_server(struct fx *fx, int family);
/* A hang target closed at teardown; skips the test if the trick fails. */
struct hang_target *fx_hang_target(struct fx *fx);

/*
 * Starts the relay on a config template in which "@P<n>@" stands for
 * external port base+n and "@PEND@" for base+width-1. A free block of width
 * ports is chosen (flags: PORTS_V4/PORTS_V6); if the relay exits 1 with
 * "Address already in use" (the port was taken meanwhile) a new block is
 * tried, up to 5 times. Fails the test unless the relay becomes ready.
 * Returns the base.
 */
uint16_t fx_start_relay(struct fx *fx, unsigned width, unsigned flags, const char *tmpl);
/*
 * Same, with extra args appended after "-c FILE -l debug" (the same port
 * placeholders are substituted in them). tmpl may be NULL: no -c at all
 * (forwards given with -L).
 */
uint16_t fx_start_relay_args(struct fx *fx, unsigned width, unsigned flags, const char *tmpl,
			     const char *const *extra);
/*
 * One TCP forward named name from loopback:@P0@ of family to loopback:int_port,
 * with these tcp settings; the relay started as by fx_start_relay. Returns the
 * external port.
 */
uint16_t fx_start_tcp_forward(struct fx *fx, const char *name, int family, unsigned int_port,
			      double connect_timeout, double idle_timeout, bool splice);
/* A connection to the relay's loopback:port; fails the test if it cannot be made. */
int fx_connect_relay(struct fx *fx, int family, uint16_t port);
/* Stops the relay and asserts a clean exit (status 0). */
void fx_stop_relay_ok(struct fx *fx);

/* Fails the test with the relay's captured log appended. */
#define fail_with_log(fx, ...)                                      \
	do {                                                        \
		fx_dump_log(fx);                                    \
		fail_msg(__VA_ARGS__);                              \
	} while (0)
void fx_dump_log(struct fx *fx);

#define FX_TEST(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

#endif
