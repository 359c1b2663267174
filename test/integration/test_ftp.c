/*
 * test_ftp.c - the FTP helper through the real binary: the test plays the
 * FTP client and a scripted FTP server, so it sees exactly what each side
 * receives.
 *
 * Every party has its own loopback address (the whole of 127.0.0.0/8 is
 * local), so who connected from where is visible:
 *
 *   client 127.0.0.4 --> relay 127.0.0.2:P0 ==[relay 127.0.0.1]==> server 127.0.0.5
 *   a third host, "foreign": 127.0.0.3
 *
 * The relay reaches the server from 127.0.0.1 (the kernel's source for
 * 127/8); tests read it from the server's side of the control connection
 * rather than assume it. The server's 227 replies name 10.9.9.9, an address
 * nobody uses: the relay must take only the port from them.
 */
#include "harness.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define RELAY_IP "127.0.0.2"
#define FOREIGN_IP "127.0.0.3"
#define CLIENT_IP "127.0.0.4"
#define SERVER_IP "127.0.0.5"

/* Bounds a hang; nothing waits this long when things work. */
#define HANG (10000 * hang_scale())

#define MIB (1024 * 1024)

/* ---- descriptors closed at teardown ------------------------------------------------ */

#define MAX_TRACKED 128
static int tracked[MAX_TRACKED];
static int ntracked;

static int track(int fd)
{
	if (fd >= 0) {
		assert_true(ntracked < MAX_TRACKED);
		tracked[ntracked++] = fd;
	}
	return fd;
}

static void close_tracked(int fd)
{
	for (int i = 0; i < ntracked; i++) {
		if (tracked[i] == fd) {
			tracked[i] = tracked[--ntracked];
			break;
		}
	}
	close(fd);
}

static int ftp_setup(void **state)
{
	ntracked = 0;
	return fx_setup(state);
}

static int ftp_teardown(void **state)
{
	/* The relay first, so that closing these cannot make it log anything more. */
	struct fx *fx = *state;
	if (fx && fx->relay_inited) {
		relay_destroy(&fx->relay);
		fx->relay_inited = false;
	}
	while (ntracked > 0)
		close(tracked[--ntracked]);
	return fx_teardown(state);
}

#define FTP_TEST(fn) cmocka_unit_test_setup_teardown(fn, ftp_setup, ftp_teardown)

/* ---- text --------------------------------------------------------------------------- */

/* s with CR, LF and bytes outside ASCII shown as escapes; only the first 200 bytes. */
static const char *shown(const char *s, char *buf, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; s[i] && i < 200 && n + 5 < cap; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '\r')
			n += (size_t)snprintf(buf + n, cap - n, "\\r");
		else if (ch == '\n')
			n += (size_t)snprintf(buf + n, cap - n, "\\n");
		else if (ch < 32 || ch > 126)
			n += (size_t)snprintf(buf + n, cap - n, "\\x%02x", ch);
		else
			buf[n++] = (char)ch;
	}
	buf[n] = '\0';
	return buf;
}

/* "127,0,0,1" for "127.0.0.1". */
static void commas(const char *ip, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", ip);
	for (char *p = buf; *p; p++)
		if (*p == '.')
			*p = ',';
}

/* ---- the relay ----------------------------------------------------------------------- */

struct world {
	struct fx *fx;
	const char *relay_ip;   /* the forward's external address */
	const char *server_ip;
	int srv_lfd;            /* the scripted server's control listener */
	uint16_t srv_port;
	uint16_t base;          /* the relay's first external port (@P0@) */
	int listen_baseline;    /* the relay's listening sockets before any session */
};

/* The server's control listener on server_ip; call before starting the relay. */
static void world_server_at(struct fx *fx, struct world *w, const char *relay_ip,
			    const char *server_ip)
{
	memset(w, 0, sizeof *w);
	w->fx = fx;
	w->relay_ip = relay_ip;
	w->server_ip = server_ip;
	w->srv_lfd = track(sock_listen_at(server_ip, 0, 16));
	if (w->srv_lfd < 0)
		fail_msg("cannot listen on %s: %s", server_ip, strerror(errno));
	w->srv_port = sock_port(w->srv_lfd);
}

static void world_server(struct fx *fx, struct world *w)
{
	world_server_at(fx, w, RELAY_IP, SERVER_IP);
}

static void world_started(struct world *w, uint16_t base)
{
	w->base = base;
	w->listen_baseline = relay_listen_count(&w->fx->relay);
	if (w->listen_baseline <= 0)
		fail_with_log(w->fx, "cannot count the relay's listening sockets (%d)",
			      w->listen_baseline);
}

/*
 * One forward "ftp" on RELAY_IP:@P0@ to the scripted server, with the
 * helper on. global goes before the forwards; fwd_extra inside the forward.
 */
static void start_ftp_relay(struct fx *fx, struct world *w, unsigned width, const char *global,
			    const char *fwd_extra)
{
	fx_require_relay();
	world_server(fx, w);
	char *t = NULL;
	assert_true(asprintf(&t,
			     "%s\n"
			     "forwards = (\n"
			     "  { name = \"ftp\"; protocol = \"tcp\"; ftp = true;\n"
			     "    external_address = \"" RELAY_IP "\"; external_port = @P0@;\n"
			     "    internal_ip = \"" SERVER_IP "\"; internal_port = %u; %s }\n"
			     ");\n",
			     global ? global : "", w->srv_port, fwd_extra ? fwd_extra : "") > 0);
	uint16_t base = fx_start_relay(fx, width, PORTS_V4, t);
	free(t);
	world_started(w, base);
}

static int listen_count(struct world *w)
{
	return relay_listen_count(&w->fx->relay);
}

/* With wait, polls until the count is right (a listener closes just after its log line). */
static void check_listeners(struct world *w, int data_listeners, const char *when, bool wait)
{
	int n = listen_count(w);
	int64_t deadline = now_ms() + HANG;
	while (wait && n != w->listen_baseline + data_listeners && now_ms() < deadline) {
		sleep_ms(2);
		n = listen_count(w);
	}
	if (n != w->listen_baseline + data_listeners)
		fail_with_log(w->fx, "%s: the relay holds %d listening sockets, expected %d "
			      "(%d for the forward and %d data listeners)", when, n,
			      w->listen_baseline + data_listeners, w->listen_baseline,
			      data_listeners);
}

static void expect_listeners(struct world *w, int data_listeners, const char *when)
{
	check_listeners(w, data_listeners, when, false);
}

static void wait_listeners(struct world *w, int data_listeners, const char *when)
{
	check_listeners(w, data_listeners, when, true);
}

/*
 * Stops the relay (exit 0) and checks its closing ftp line: data listeners
 * opened, connected, expired unused, closed unused (replaced or with their
 * control connection), foreign data connections refused, commands refused.
 */
static void stop_and_expect_totals(struct fx *fx, unsigned opened, unsigned connected,
				   unsigned expired, unsigned dropped, unsigned foreign,
				   unsigned commands)
{
	fx_stop_relay_ok(fx);
	char want[400];
	snprintf(want, sizeof want,
		 "stopped. ftp: %u data listeners (%u connected, %u expired unused, %u closed "
		 "unused with their control connection or replaced), %u data connections from a "
		 "foreign address refused, %u commands refused",
		 opened, connected, expired, dropped, foreign, commands);
	char *line = relay_log_line_copy(&fx->relay, "stopped. ftp:");
	bool ok = line && strstr(line, want);
	if (!ok) {
		fx_dump_log(fx);
		fail_msg("closing line:\n  got  %s\n  want ...%s", line ? line : "(none)", want);
	}
	free(line);
}

static void wait_log_or_fail(struct fx *fx, const char *const *subs, const char *what)
{
	if (!wait_for_log_line(&fx->relay, subs, HANG))
		fail_with_log(fx, "no log line: %s", what);
}

/* ---- a control connection ------------------------------------------------------------- */

struct ctl {
	struct fx *fx;
	int cli, srv;
	const char *relay_outer; /* the address the client connected to */
	char relay_inner[64];   /* the relay's address as the server sees it */
	uint64_t to_server;     /* control bytes the server received */
	uint64_t to_client;     /* ... the client received */
};

static const char greeting[] = "220 scripted server ready\r\n";

static void say(struct ctl *c, int fd, const char *text, size_t len)
{
	if (sock_send_all(fd, text, len, HANG) != 0)
		fail_with_log(c->fx, "sending to the %s: %s", fd == c->cli ? "relay (client side)"
							  : "relay (server side)", strerror(errno));
}

static void cli_say(struct ctl *c, const char *text)
{
	say(c, c->cli, text, strlen(text));
}

static void srv_say(struct ctl *c, const char *text)
{
	say(c, c->srv, text, strlen(text));
}

/* The next line fd receives, into buf. */
static void get_line(struct ctl *c, int fd, char *buf, size_t cap)
{
	const char *who = fd == c->cli ? "client" : "server";
	ssize_t n = sock_recv_line(fd, buf, cap, HANG);
	if (n < 0) {
		char s[1024];
		fail_with_log(c->fx, "the %s got no line (%s); partial: \"%s\"", who,
			      errno == ENODATA ? "EOF" : strerror(errno), shown(buf, s, sizeof s));
	}
	if (fd == c->cli)
		c->to_client += (uint64_t)n;
	else
		c->to_server += (uint64_t)n;
}

static void expect_line(struct ctl *c, int fd, const char *want)
{
	char got[1024], a[1024], b[1024];
	get_line(c, fd, got, sizeof got);
	if (strcmp(got, want) != 0)
		fail_with_log(c->fx, "the %s got \"%s\", expected \"%s\"",
			      fd == c->cli ? "client" : "server", shown(got, a, sizeof a),
			      shown(want, b, sizeof b));
}

static void cli_expect(struct ctl *c, const char *want)
{
	expect_line(c, c->cli, want);
}

static void srv_expect(struct ctl *c, const char *want)
{
	expect_line(c, c->srv, want);
}

/* A client connection through the relay, from src_ip, and the server's side of it, greeted. */
static void ctl_open_from(struct world *w, struct ctl *c, const char *src_ip)
{
	memset(c, 0, sizeof *c);
	c->fx = w->fx;
	c->cli = track(sock_connect_from(src_ip, w->relay_ip, w->base, HANG));
	if (c->cli < 0)
		fail_with_log(w->fx, "connect to the relay %s port %u: %s", w->relay_ip, w->base,
			      strerror(errno));
	c->srv = track(sock_accept(w->srv_lfd, HANG));
	if (c->srv < 0)
		fail_with_log(w->fx, "the server got no control connection: %s", strerror(errno));
	c->relay_outer = w->relay_ip;
	sock_ip_text(c->srv, true, c->relay_inner, sizeof c->relay_inner);
	srv_say(c, greeting);
	cli_expect(c, greeting);
}

static void ctl_open(struct world *w, struct ctl *c)
{
	ctl_open_from(w, c, CLIENT_IP);
}

/* QUIT, 221, the server closes; the client sees the reply and EOF. */
static void ctl_quit(struct ctl *c)
{
	cli_say(c, "QUIT\r\n");
	srv_expect(c, "QUIT\r\n");
	srv_say(c, "221 Goodbye.\r\n");
	close_tracked(c->srv);
	c->srv = -1;
	cli_expect(c, "221 Goodbye.\r\n");
	/* The client as the log shows it: a.b.c.d:port, or [::ffff:a.b.c.d]:port on a dual-stack forward. */
	char ip[64], port[32];
	sock_ip_text(c->cli, false, ip, sizeof ip);
	snprintf(port, sizeof port, "]:%u -> ", sock_port(c->cli));
	const char *sub[] = { "tcp closed ", ip, strchr(ip, ':') ? port : port + 1, NULL };
	int rc = sock_wait_close(c->cli, HANG, NULL);
	if (rc != 0)
		fail_with_log(c->fx, "after 221 the client's control connection ended with %s, "
			      "expected EOF", rc < 0 ? "nothing (timeout)" : strerror(rc));
	close_tracked(c->cli);
	c->cli = -1;
	/* The relay has ended the session: its pending data listeners are closed and counted. */
	if (!wait_for_log_line(&c->fx->relay, sub, HANG))
		fail_with_log(c->fx, "no \"tcp closed\" line for %s%s", ip, sub[2]);
}

/* ---- passive and active exchanges ------------------------------------------------------- */

static void bogus_227(uint16_t port, char *buf, size_t cap)
{
	snprintf(buf, cap, "227 Entering Passive Mode (10,9,9,9,%u,%u).\r\n", port >> 8,
		 port & 0xff);
}

/* The port of "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).\r\n" naming the relay, or fails. */
static uint16_t relay_227_port(struct ctl *c, const char *line)
{
	unsigned a, b, cc, d, p1, p2;
	char want[128], s1[512], s2[512];
	if (sscanf(line, "227 Entering Passive Mode (%u,%u,%u,%u,%u,%u).", &a, &b, &cc, &d, &p1,
		   &p2) == 6 &&
	    p1 < 256 && p2 < 256) {
		char relay[32];
		commas(c->relay_outer, relay, sizeof relay);
		snprintf(want, sizeof want, "227 Entering Passive Mode (%s,%u,%u).\r\n", relay, p1,
			 p2);
		if (strcmp(line, want) == 0 && (p1 << 8 | p2) != 0)
			return (uint16_t)(p1 << 8 | p2);
	} else {
		snprintf(want, sizeof want, "227 Entering Passive Mode (%s,p1,p2).\\r\\n",
			 c->relay_outer);
	}
	fail_with_log(c->fx, "the client got \"%s\", expected \"%s\" (the relay's address)",
		      shown(line, s1, sizeof s1), shown(want, s2, sizeof s2));
	return 0;
}

static uint16_t relay_229_port(struct ctl *c, const char *line)
{
	unsigned p;
	char want[128], s1[512];
	if (sscanf(line, "229 Entering Extended Passive Mode (|||%u|)", &p) == 1 && p > 0 &&
	    p < 65536) {
		snprintf(want, sizeof want, "229 Entering Extended Passive Mode (|||%u|)\r\n", p);
		if (strcmp(line, want) == 0)
			return (uint16_t)p;
	}
	fail_with_log(c->fx, "the client got \"%s\", expected "
		      "\"229 Entering Extended Passive Mode (|||PORT|)\\r\\n\"",
		      shown(line, s1, sizeof s1));
	return 0;
}

/*
 * The client sends command (PASV or EPSV in some form); the server must get
 * "PASV" and answers reply (with its data port); the client's answer names
 * the relay: its data port is returned.
 */
static uint16_t passive_with_reply(struct ctl *c, const char *command, const char *reply)
{
	cli_say(c, command);
	srv_expect(c, "PASV\r\n");
	srv_say(c, reply);
	char line[512];
	get_line(c, c->cli, line, sizeof line);
	return strncmp(command, "EPSV", 4) == 0 ? relay_229_port(c, line)
						 : relay_227_port(c, line);
}

static uint16_t passive(struct ctl *c, const char *command, uint16_t server_data_port)
{
	char reply[128];
	bogus_227(server_data_port, reply, sizeof reply);
	return passive_with_reply(c, command, reply);
}

/*
 * The line the server got for a PORT/EPRT: "PORT <relay's inner address>,p1,p2";
 * returns the port.
 */
static uint16_t relay_port_command(struct ctl *c)
{
	char line[512], s1[512], inner[64], want[128];
	get_line(c, c->srv, line, sizeof line);
	commas(c->relay_inner, inner, sizeof inner);
	unsigned a, b, cc, d, p1, p2;
	if (sscanf(line, "PORT %u,%u,%u,%u,%u,%u", &a, &b, &cc, &d, &p1, &p2) == 6 && p1 < 256 &&
	    p2 < 256) {
		snprintf(want, sizeof want, "PORT %s,%u,%u\r\n", inner, p1, p2);
		if (strcmp(line, want) == 0 && (p1 << 8 | p2) != 0)
			return (uint16_t)(p1 << 8 | p2);
	}
	fail_with_log(c->fx, "the server got \"%s\", expected \"PORT %s,p1,p2\\r\\n\" "
		      "(the relay's own address)", shown(line, s1, sizeof s1), inner);
	return 0;
}

/* ---- data ---------------------------------------------------------------------------------- */

/*
 * up bytes from a to b and down bytes from b to a at the same time, each a
 * checked stream, each direction ending with a FIN.
 */
static void data_both_ways(struct fx *fx, int a, int b, uint64_t up, uint64_t down,
			   uint64_t seed, const char *what)
{
	struct xfer xs[2];
	xfer_init(&xs[0], a, seed, up, seed + 1, down);
	xfer_init(&xs[1], b, seed + 1, down, seed, up);
	size_t not_done = xfer_run(xs, 2, 6 * HANG);
	char why[300];
	xfer_first_problem(xs, 2, why, sizeof why);
	xfer_release(&xs[0]);
	xfer_release(&xs[1]);
	if (not_done)
		fail_with_log(fx, "%s: %s", what, why);
}

/* A connection from src_ip to ip:port must be refused (nothing listens). */
static void expect_connect_refused(struct fx *fx, const char *src_ip, const char *ip,
				   uint16_t port, const char *what)
{
	int fd = sock_connect_from(src_ip, ip, port, HANG);
	if (fd >= 0) {
		close(fd);
		fail_with_log(fx, "%s: a connection from %s to %s:%u was accepted, expected "
			      "refused", what, src_ip, ip, port);
	}
	if (errno != ECONNREFUSED)
		fail_with_log(fx, "%s: connect from %s to %s:%u: %s, expected refused", what,
			      src_ip, ip, port, strerror(errno));
}

/*
 * A connection from src_ip to ip:port is accepted by the kernel and then
 * reset by the relay (a read sees ECONNRESET, or the socket is CLOSED,
 * where a FIN would leave it in CLOSE_WAIT).
 */
static void expect_connect_reset(struct fx *fx, const char *src_ip, const char *ip,
				 uint16_t port, const char *what)
{
	int fd = sock_connect_from(src_ip, ip, port, HANG);
	if (fd < 0)
		fail_with_log(fx, "%s: connect from %s to %s:%u: %s, expected accepted and reset",
			      what, src_ip, ip, port, strerror(errno));
	size_t got = 0;
	int rc = sock_wait_close(fd, HANG, &got);
	bool reset = rc == ECONNRESET || (rc == 0 && sock_tcp_state(fd) == TCP_CLOSE);
	close(fd);
	if (!reset || got != 0)
		fail_with_log(fx, "%s: the connection from %s ended with %s after %zu bytes, "
			      "expected a reset", what, src_ip,
			      rc == 0 ? "EOF" : rc < 0 ? "nothing (timeout)" : strerror(rc), got);
}

static int accept_or_fail(struct fx *fx, int lfd, const char *what)
{
	int fd = track(sock_accept(lfd, HANG));
	if (fd < 0)
		fail_with_log(fx, "%s: nothing accepted: %s", what, strerror(errno));
	return fd;
}

/* Nothing waits in lfd's accept queue. */
static void expect_no_connection(struct fx *fx, int lfd, const char *what)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
	if (fd >= 0) {
		char ip[64];
		sock_ip_text(fd, true, ip, sizeof ip);
		close(fd);
		fail_with_log(fx, "%s: an unexpected connection from %s", what, ip);
	}
}

static void expect_peer_ip(struct fx *fx, int fd, const char *want, const char *what)
{
	char ip[64];
	sock_ip_text(fd, true, ip, sizeof ip);
	if (strcmp(ip, want) != 0)
		fail_with_log(fx, "%s comes from %s, expected %s", what, ip, want);
}

/* ---- PASV ------------------------------------------------------------------------------------ */

/*
 * PASV: the client gets the relay's address (not the server's bogus one), its
 * connection reaches the server's data port from the relay's inner address,
 * several MiB pass both ways intact, and the port takes that one connection only.
 */
static void test_pasv_rewritten_data_intact_one_shot(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);
	if (strcmp(c.relay_inner, CLIENT_IP) == 0 || strcmp(c.relay_inner, RELAY_IP) == 0)
		fail_with_log(fx, "the relay reaches the server from %s, expected its own address",
			      c.relay_inner);

	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	uint16_t dport = sock_port(dl);
	uint16_t x = passive(&c, "PASV\r\n", dport);
	char want[160];
	snprintf(want, sizeof want, "ftp: passive data listener on " RELAY_IP ":%u for "
		 SERVER_IP ":%u", x, dport);
	const char *sub[] = { want, NULL };
	wait_log_or_fail(fx, sub, want);
	expect_listeners(&w, 1, "after PASV");

	int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
	if (d < 0)
		fail_with_log(fx, "connect to the passive port %u: %s", x, strerror(errno));
	int sd = accept_or_fail(fx, dl, "the server's data port");
	expect_peer_ip(fx, sd, c.relay_inner, "the server's data connection");
	expect_listeners(&w, 0, "after the data connection");
	expect_connect_refused(fx, CLIENT_IP, RELAY_IP, x, "a second connection to the passive port");

	data_both_ways(fx, d, sd, 4 * MIB, 3 * MIB, 0x2270, "passive data");
	close_tracked(d);
	close_tracked(sd);
	expect_no_connection(fx, dl, "the server's data port");
	char target[64];
	snprintf(target, sizeof target, "-> " SERVER_IP ":%u:", dport);
	const char *closed[] = { "ftp passive data closed " CLIENT_IP ":", target,
				 "4194304 bytes to internal, 3145728 bytes to client", NULL };
	wait_log_or_fail(fx, closed, "ftp passive data closed ... 4194304 bytes to internal, "
			 "3145728 bytes to client");

	ctl_quit(&c);
	const char *ctl_closed[] = { "tcp closed " CLIENT_IP ":", NULL };
	wait_log_or_fail(fx, ctl_closed, "tcp closed for the control connection");
	uint64_t to_internal = c.to_server + 4 * MIB, to_client = c.to_client + 3 * MIB;
	stop_and_expect_totals(fx, 1, 1, 0, 0, 0, 0);
	char tcp[200];
	snprintf(tcp, sizeof tcp, "stopped. tcp: 1 connections (0 failed to connect, 0 reset, "
		 "0 idle timeouts), %llu bytes to internal, %llu bytes to client",
		 (unsigned long long)to_internal, (unsigned long long)to_client);
	if (!relay_log_contains(&fx->relay, tcp))
		fail_with_log(fx, "no closing tcp line \"%s\"", tcp);
}

/*
 * EPSV: the server still gets PASV (an IPv4 server) and the client 229;
 * a server answering 229 works too, for PASV and EPSV; EPSV 2 from an IPv4
 * client is 522; a passive reply without a port gives the client 425.
 */
static void test_epsv_229_and_server_forms(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	uint16_t dport = sock_port(dl);
	char reply229[128];
	snprintf(reply229, sizeof reply229, "229 Entering Extended Passive Mode (|||%u|)\r\n",
		 dport);

	struct {
		const char *command;
		bool server_229;
	} rounds[] = {
		{ "EPSV\r\n", false },
		{ "EPSV 1\r\n", true },
		{ "epsv\r\n", false },
		{ "PASV\r\n", true },
	};
	for (size_t i = 0; i < sizeof rounds / sizeof rounds[0]; i++) {
		char reply[128];
		if (rounds[i].server_229)
			snprintf(reply, sizeof reply, "%s", reply229);
		else
			bogus_227(dport, reply, sizeof reply);
		char cmd[16];
		snprintf(cmd, sizeof cmd, "%s", rounds[i].command);
		for (char *p = cmd; *p; p++)
			if (*p >= 'a' && *p <= 'z')
				*p = (char)(*p - 'a' + 'A');
		cli_say(&c, rounds[i].command);
		srv_expect(&c, "PASV\r\n");
		srv_say(&c, reply);
		char line[256];
		get_line(&c, c.cli, line, sizeof line);
		uint16_t x = strncmp(cmd, "EPSV", 4) == 0 ? relay_229_port(&c, line)
							  : relay_227_port(&c, line);
		int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
		if (d < 0)
			fail_with_log(fx, "round %zu: connect to port %u: %s", i, x, strerror(errno));
		int sd = accept_or_fail(fx, dl, "the server's data port");
		data_both_ways(fx, d, sd, 256 * 1024 + i, 128 * 1024 + i, 0x2290 + 2 * i,
			       rounds[i].command);
		close_tracked(d);
		close_tracked(sd);
	}

	/* EPSV 2 from an IPv4 client: the relay answers, the server hears nothing. */
	cli_say(&c, "EPSV 2\r\nNOOP\r\n");
	srv_expect(&c, "NOOP\r\n");
	srv_say(&c, "200 NOOP ok.\r\n");
	cli_expect(&c, "522 Network protocol not supported, use (1)\r\n");
	cli_expect(&c, "200 NOOP ok.\r\n");

	/* A passive reply with no port in it. */
	cli_say(&c, "PASV\r\n");
	srv_expect(&c, "PASV\r\n");
	srv_say(&c, "227 Entering Passive Mode.\r\n");
	cli_expect(&c, "425 Cannot open data connection.\r\n");
	expect_listeners(&w, 0, "after an unreadable 227");

	ctl_quit(&c);
	stop_and_expect_totals(fx, 4, 4, 0, 0, 0, 2);
}

/* ---- PORT and EPRT ----------------------------------------------------------------------------- */

/*
 * PORT and EPRT: the server gets PORT naming the relay's own address; only
 * the server may connect there (a third host and the client itself are
 * reset); the server's connection reaches the client's port from the relay's
 * external address; data intact; one connection only.
 */
static void test_port_eprt_active_and_stealing(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);

	for (int round = 0; round < 2; round++) {
		int cl = track(sock_listen_at(CLIENT_IP, 0, 4));
		uint16_t q = sock_port(cl);
		char cmd[128];
		if (round == 0)
			snprintf(cmd, sizeof cmd, "PORT 127,0,0,4,%u,%u\r\n", q >> 8, q & 0xff);
		else
			snprintf(cmd, sizeof cmd, "EPRT |1|" CLIENT_IP "|%u|\r\n", q);
		cli_say(&c, cmd);
		uint16_t y = relay_port_command(&c);
		char want[160];
		snprintf(want, sizeof want, "ftp: active data listener on %s:%u for " CLIENT_IP ":%u",
			 c.relay_inner, y, q);
		const char *sub[] = { want, NULL };
		wait_log_or_fail(fx, sub, want);
		srv_say(&c, "200 PORT command successful.\r\n");
		cli_expect(&c, "200 PORT command successful.\r\n");
		expect_listeners(&w, 1, "after PORT");

		if (round == 0) {
			expect_connect_reset(fx, FOREIGN_IP, c.relay_inner, y,
					     "a third host on the active port");
			const char *warn[] = { "warn", "ftp: data connection from " FOREIGN_IP ":",
					       "refused (only the server may use it)", NULL };
			wait_log_or_fail(fx, warn, "the warning about " FOREIGN_IP);
			expect_connect_reset(fx, CLIENT_IP, c.relay_inner, y,
					     "the client on the active port");
			expect_listeners(&w, 1, "after the refused connections");
			expect_no_connection(fx, cl, "the client's data port");
		}

		int sd = track(sock_connect_from(SERVER_IP, c.relay_inner, y, HANG));
		if (sd < 0)
			fail_with_log(fx, "the server's connect to %s:%u: %s", c.relay_inner, y,
				      strerror(errno));
		int cd = accept_or_fail(fx, cl, "the client's data port");
		expect_peer_ip(fx, cd, RELAY_IP, "the client's data connection");
		expect_listeners(&w, 0, "after the active data connection");
		expect_connect_refused(fx, SERVER_IP, c.relay_inner, y,
				       "a second connection to the active port");
		uint64_t up = round == 0 ? 2 * MIB : 300000, down = round == 0 ? MIB : 200000;
		data_both_ways(fx, cd, sd, up, down, 0x9090 + (uint64_t)round * 2, cmd);
		close_tracked(cd);
		close_tracked(sd);
		char from[64], bytes[128];
		snprintf(from, sizeof from, "-> " CLIENT_IP ":%u:", q);
		snprintf(bytes, sizeof bytes, "%llu bytes to internal, %llu bytes to client",
			 (unsigned long long)up, (unsigned long long)down);
		const char *closed[] = { "ftp active data closed " SERVER_IP ":", from, bytes,
					 NULL };
		wait_log_or_fail(fx, closed, bytes);
		expect_no_connection(fx, cl, "the client's data port");
	}
	ctl_quit(&c);
	stop_and_expect_totals(fx, 2, 2, 0, 0, 2, 0);
}

/* ---- stealing a passive port ---------------------------------------------------------------------- */

/*
 * A third host connecting to a passive port first is reset and counted; the
 * port stays open, and the client's own connection still gets through to
 * the server, which sees only that one.
 */
static void test_passive_port_only_for_the_client(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	uint16_t x = passive(&c, "PASV\r\n", sock_port(dl));

	expect_connect_reset(fx, FOREIGN_IP, RELAY_IP, x, "a third host on the passive port");
	const char *warn[] = { "warn", "ftp: data connection from " FOREIGN_IP ":",
			       "refused (only the client may use it)", "(client " CLIENT_IP ":",
			       NULL };
	wait_log_or_fail(fx, warn, "the warning about " FOREIGN_IP);
	expect_connect_reset(fx, SERVER_IP, RELAY_IP, x, "the server on the passive port");
	expect_listeners(&w, 1, "after the refused connections");
	expect_no_connection(fx, dl, "the server's data port");

	int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
	if (d < 0)
		fail_with_log(fx, "the client's connect after the thief: %s", strerror(errno));
	int sd = accept_or_fail(fx, dl, "the server's data port");
	data_both_ways(fx, d, sd, 100000, 150000, 0x5151, "passive data after a thief");
	close_tracked(d);
	close_tracked(sd);
	expect_no_connection(fx, dl, "the server's data port");
	ctl_quit(&c);
	stop_and_expect_totals(fx, 1, 1, 0, 0, 2, 0);
}

/* ---- refusals -------------------------------------------------------------------------------------- */

/*
 * The client sends bad, then NOOP, in one write: the server's next line must
 * be the NOOP (bad never reached it), and the client gets the relay's reply
 * to bad and then the server's to NOOP, in that order.
 */
static void refused_before_noop(struct ctl *c, const char *bad, const char *relay_reply)
{
	char both[256];
	snprintf(both, sizeof both, "%sNOOP\r\n", bad);
	cli_say(c, both);
	srv_expect(c, "NOOP\r\n");
	srv_say(c, "200 NOOP ok.\r\n");
	cli_expect(c, relay_reply);
	cli_expect(c, "200 NOOP ok.\r\n");
}

static const char r_foreign[] = "500 Illegal data port: the address is not the client's own.\r\n";
static const char r_low[] = "500 Illegal data port: ports below 1024 are refused.\r\n";
static const char r_syntax[] = "501 Syntax error in parameters or arguments.\r\n";
static const char r_long_form[] = "502 Command not implemented by the relay; use EPRT or EPSV.\r\n";
static const char r_after_all[] = "503 Only EPSV may open data connections after EPSV ALL.\r\n";

/*
 * Bounce attempts (another host, a privileged port), the long forms,
 * malformed addresses and lines, and EPSV ALL: answered by the relay, never
 * seen by the server, no port opened.
 */
static void test_bounce_and_malformed_commands_refused(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);

	static const struct {
		const char *line;
		const char *reply;
	} refusals[] = {
		{ "PORT 127,0,0,3,4,1\r\n", r_foreign },          /* another host */
		{ "port 127,0,0,3,20,0\r\n", r_foreign },         /* verbs in any case */
		{ "PORT 127,0,0,4,3,255\r\n", r_low },            /* port 1023 */
		{ "PORT 127,0,0,4,0,21\r\n", r_low },             /* port 21 */
		{ "EPRT |1|127.0.0.3|5000|\r\n", r_foreign },
		{ "EPRT |1|127.0.0.4|80|\r\n", r_low },
		{ "EPRT |2|::1|5000|\r\n", "522 Network protocol not supported, use (1)\r\n" },
		{ "LPRT 4,4,127,0,0,4,2,19,136\r\n", r_long_form },
		{ "LPSV\r\n", r_long_form },
		{ "PORT 256,0,0,4,20,0\r\n", r_syntax },
		{ "PORT 127,0,0,4,20,0,1\r\n", r_syntax },        /* seven numbers */
		{ "PORT 127,0,0,4,0,0\r\n", r_syntax },           /* port 0 */
		{ "PORT 127,0,0,4,20\r\n", r_syntax },            /* five numbers */
		{ "PORT\r\n", r_syntax },
		{ "EPRT |1|127.0.0.4|0|\r\n", r_syntax },
		{ "EPRT |1|127.0.0.4|70000|\r\n", r_syntax },
		{ "EPSV 3\r\n", r_syntax },
		{ " PORT 127,0,0,4,20,0\r\n", r_syntax },         /* a blank before the verb */
		{ "PORT\t127,0,0,4,20,0\r\n", r_syntax },
	};
	const size_t n = sizeof refusals / sizeof refusals[0];
	for (size_t i = 0; i < n; i++) {
		refused_before_noop(&c, refusals[i].line, refusals[i].reply);
		if (i == 0) {
			const char *warn[] = { "warn", "ftp: refused PORT: data port on another host "
				"(bounce)", "(client " CLIENT_IP ":", NULL };
			wait_log_or_fail(fx, warn, "ftp: refused PORT: ... (bounce)");
		}
	}
	/* A bare CR or a NUL inside a command, and an empty line. */
	refused_before_noop(&c, "NOOP\rPORT 127,0,0,3,4,1\r\n",
			    "501 Command contains a bare CR or NUL.\r\n");
	say(&c, c.cli, "NO\0OP\r\nNOOP\r\n", 13);
	srv_expect(&c, "NOOP\r\n");
	srv_say(&c, "200 NOOP ok.\r\n");
	cli_expect(&c, "501 Command contains a bare CR or NUL.\r\n");
	cli_expect(&c, "200 NOOP ok.\r\n");
	refused_before_noop(&c, "\r\n", "500 Syntax error, command unrecognized.\r\n");
	expect_listeners(&w, 0, "after the refused commands");

	/* EPSV ALL: the relay answers and keeps the promise; the server never hears of it. */
	refused_before_noop(&c, "EPSV ALL\r\n", "200 EPSV ALL command successful.\r\n");
	refused_before_noop(&c, "PASV\r\n", r_after_all);
	refused_before_noop(&c, "PORT 127,0,0,4,20,0\r\n", r_after_all);
	refused_before_noop(&c, "EPRT |1|127.0.0.4|5120|\r\n", r_after_all);
	expect_listeners(&w, 0, "after the commands refused after EPSV ALL");
	/* EPSV still works. */
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	uint16_t x = passive(&c, "EPSV\r\n", sock_port(dl));
	int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
	if (d < 0)
		fail_with_log(fx, "EPSV after EPSV ALL: connect: %s", strerror(errno));
	int sd = accept_or_fail(fx, dl, "the server's data port");
	data_both_ways(fx, d, sd, 1000, 2000, 0xa11, "EPSV after EPSV ALL");
	close_tracked(d);
	close_tracked(sd);

	ctl_quit(&c);
	/* n, the two control characters, the empty line, and three after EPSV ALL. */
	stop_and_expect_totals(fx, 1, 1, 0, 0, 0, (unsigned)n + 3 + 3);
}

/* ---- replies nobody asked for ----------------------------------------------------------------------- */

/*
 * A 227 from the server that answers no PASV (unsolicited, or the answer to
 * another command) passes untouched and opens nothing.
 */
static void test_unsolicited_227_untouched(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);

	/* Nothing outstanding. */
	const char unsolicited[] = "227 Entering Passive Mode (127,0,0,5,117,48).\r\n";
	srv_say(&c, unsolicited);
	cli_expect(&c, unsolicited);
	/* The answer to another command. */
	cli_say(&c, "NOOP\r\n");
	srv_expect(&c, "NOOP\r\n");
	const char odd[] = "227 Entering Passive Mode (10,9,9,9,117,49).\r\n";
	srv_say(&c, odd);
	cli_expect(&c, odd);
	cli_say(&c, "STAT\r\n");
	srv_expect(&c, "STAT\r\n");
	const char odd229[] = "229 Entering Extended Passive Mode (|||30050|)\r\n";
	srv_say(&c, odd229);
	cli_expect(&c, odd229);
	expect_listeners(&w, 0, "after 227 and 229 replies to no PASV");
	if (relay_log_contains(&fx->relay, "data listener on"))
		fail_with_log(fx, "a data listener was opened for a 227 answering no PASV");

	/* The count does see a real one. */
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	passive(&c, "PASV\r\n", sock_port(dl));
	expect_listeners(&w, 1, "after a real PASV");
	ctl_quit(&c);
	stop_and_expect_totals(fx, 1, 0, 0, 1, 0, 0);
}

/* ---- how lines arrive ----------------------------------------------------------------------------------- */

/* Sends text one byte at a time, each read by the relay before the next goes. */
static void say_bytewise(struct ctl *c, int fd, const char *text)
{
	for (size_t i = 0; text[i]; i++) {
		say(c, fd, text + i, 1);
		if (sock_wait_peer_read(fd, HANG) != 0)
			fail_with_log(c->fx, "the relay did not read byte %zu of \"%s\"", i, text);
	}
}

static void use_passive_port(struct ctl *c, int dl, uint16_t x, uint64_t seed)
{
	int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
	if (d < 0)
		fail_with_log(c->fx, "connect to the passive port %u: %s", x, strerror(errno));
	int sd = accept_or_fail(c->fx, dl, "the server's data port");
	data_both_ways(c->fx, d, sd, 3000, 5000, seed, "a small transfer");
	close_tracked(d);
	close_tracked(sd);
}

/*
 * A PASV and its 227 arriving one byte at a time, three commands in one
 * write and their replies in one write, a multi-line 227 to a PASV, and a
 * 227 line inside another multi-line reply: the same results as whole lines.
 */
static void test_split_pipelined_and_multiline(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at(SERVER_IP, 0, 8));
	uint16_t dport = sock_port(dl);
	char reply[128];
	bogus_227(dport, reply, sizeof reply);

	/* Byte by byte, both ways. */
	say_bytewise(&c, c.cli, "PASV\r\n");
	srv_expect(&c, "PASV\r\n");
	say_bytewise(&c, c.srv, reply);
	char line[512];
	get_line(&c, c.cli, line, sizeof line);
	use_passive_port(&c, dl, relay_227_port(&c, line), 0x5b1);

	/* Pipelined. */
	cli_say(&c, "TYPE I\r\nPASV\r\nNOOP\r\n");
	srv_expect(&c, "TYPE I\r\n");
	srv_expect(&c, "PASV\r\n");
	srv_expect(&c, "NOOP\r\n");
	char replies[512];
	snprintf(replies, sizeof replies, "200 Type set to I.\r\n%s200 NOOP ok.\r\n", reply);
	srv_say(&c, replies);
	cli_expect(&c, "200 Type set to I.\r\n");
	get_line(&c, c.cli, line, sizeof line);
	uint16_t x = relay_227_port(&c, line);
	cli_expect(&c, "200 NOOP ok.\r\n");
	use_passive_port(&c, dl, x, 0x5b3);

	/* A multi-line 227 to a PASV: the client gets the relay's one line. */
	cli_say(&c, "PASV\r\nNOOP\r\n");
	srv_expect(&c, "PASV\r\n");
	srv_expect(&c, "NOOP\r\n");
	snprintf(replies, sizeof replies,
		 "227-Here it comes (10,9,9,9,1,1)\r\n"
		 " some text\r\n"
		 "%s200 NOOP ok.\r\n", reply);
	srv_say(&c, replies);
	get_line(&c, c.cli, line, sizeof line);
	x = relay_227_port(&c, line);
	cli_expect(&c, "200 NOOP ok.\r\n");
	use_passive_port(&c, dl, x, 0x5b5);

	/* A 227 line inside a multi-line HELP reply, and a 227 inside a 211 reply to STAT. */
	cli_say(&c, "HELP\r\n");
	srv_expect(&c, "HELP\r\n");
	const char help[] = "214-The following commands are recognized.\r\n"
			    "227 Entering Passive Mode (10,9,9,9,1,2).\r\n"
			    " PASV PORT EPSV EPRT\r\n"
			    "214 Help OK.\r\n";
	srv_say(&c, help);
	cli_expect(&c, "214-The following commands are recognized.\r\n");
	cli_expect(&c, "227 Entering Passive Mode (10,9,9,9,1,2).\r\n");
	cli_expect(&c, " PASV PORT EPSV EPRT\r\n");
	cli_expect(&c, "214 Help OK.\r\n");
	cli_say(&c, "PASV\r\nSTAT\r\n");
	srv_expect(&c, "PASV\r\n");
	srv_expect(&c, "STAT\r\n");
	/* The PASV fails at the server; the 227 in the STAT reply answers no PASV. */
	srv_say(&c, "425 Cannot open passive connection.\r\n"
		    "211-Status:\r\n"
		    "227 Entering Passive Mode (10,9,9,9,1,3).\r\n"
		    "211 End of status.\r\n");
	cli_expect(&c, "425 Cannot open passive connection.\r\n");
	cli_expect(&c, "211-Status:\r\n");
	cli_expect(&c, "227 Entering Passive Mode (10,9,9,9,1,3).\r\n");
	cli_expect(&c, "211 End of status.\r\n");
	expect_listeners(&w, 0, "after the multi-line replies");

	ctl_quit(&c);
	stop_and_expect_totals(fx, 3, 3, 0, 0, 0, 0);
}

/* ---- data_timeout ------------------------------------------------------------------------------------ */

/* With ftp.data_timeout = 0.5, unused passive and active ports close on time. */
static void test_data_timeout_closes_unused_ports(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, "ftp = { data_timeout = 0.5; };", NULL);
	struct ctl c;
	ctl_open(&w, &c);

	int64_t t0 = now_ms();   /* before the listener exists */
	uint16_t x = passive(&c, "PASV\r\n", 40000);
	expect_listeners(&w, 1, "after PASV");
	const char *expired[] = { "ftp: data listener closed unused after 0.5 s", NULL };
	wait_log_or_fail(fx, expired, "the passive listener's expiry");
	int64_t elapsed = now_ms() - t0;
	if (elapsed < 450)
		fail_with_log(fx, "the passive port closed after %lld ms, before the 0.5 s "
			      "data_timeout", (long long)elapsed);
	wait_listeners(&w, 0, "after data_timeout");
	expect_connect_refused(fx, CLIENT_IP, RELAY_IP, x, "the expired passive port");

	int cl = track(sock_listen_at(CLIENT_IP, 0, 4));
	char cmd[64];
	snprintf(cmd, sizeof cmd, "PORT 127,0,0,4,%u,%u\r\n", sock_port(cl) >> 8,
		 sock_port(cl) & 0xff);
	t0 = now_ms();
	cli_say(&c, cmd);
	uint16_t y = relay_port_command(&c);
	srv_say(&c, "200 PORT command successful.\r\n");
	cli_expect(&c, "200 PORT command successful.\r\n");
	int64_t deadline = now_ms() + HANG;
	while (relay_log_count(&fx->relay, "ftp: data listener closed unused") < 2 &&
	       now_ms() < deadline)
		sleep_ms(5);
	elapsed = now_ms() - t0;
	if (relay_log_count(&fx->relay, "ftp: data listener closed unused") != 2)
		fail_with_log(fx, "the active listener did not expire");
	wait_listeners(&w, 0, "after the active port's data_timeout");
	if (elapsed < 450)
		fail_with_log(fx, "the active port closed after %lld ms, before the 0.5 s "
			      "data_timeout", (long long)elapsed);
	expect_connect_refused(fx, SERVER_IP, c.relay_inner, y, "the expired active port");
	expect_no_connection(fx, cl, "the client's data port");
	ctl_quit(&c);
	stop_and_expect_totals(fx, 2, 0, 2, 0, 0, 0);
}

/* ---- over-long lines ---------------------------------------------------------------------------------- */

/*
 * The client gets exactly the 421 and then the end; the server got nothing
 * more. The side that sent the long line may see a reset: the relay closes
 * with its unread bytes.
 */
static void expect_421_and_end(struct ctl *c, bool client_sent_it)
{
	cli_expect(c, "421 Line too long; the relay closes the control connection.\r\n");
	size_t extra = 0;
	int rc = sock_wait_close(c->cli, HANG, &extra);
	if ((rc != 0 && !(client_sent_it && rc == ECONNRESET)) || extra != 0)
		fail_with_log(c->fx, "after the 421 the client got %zu more bytes and %s, "
			      "expected the end", extra,
			      rc < 0 ? "no end (timeout)" : rc == 0 ? "EOF" : strerror(rc));
	rc = sock_wait_close(c->srv, HANG, &extra);
	if ((rc != 0 && !(!client_sent_it && rc == ECONNRESET)) || extra != 0)
		fail_with_log(c->fx, "the server's control connection: %zu bytes and %s, "
			      "expected EOF and nothing", extra,
			      rc < 0 ? "no end (timeout)" : strerror(rc));
}

/*
 * A command of exactly 8192 bytes with its CR LF passes intact; one longer
 * ends the session with a 421 to the client and never reaches the server;
 * so does an over-long reply line from the server.
 */
static void test_long_lines_end_the_session(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);

	struct ctl c;
	ctl_open(&w, &c);
	const size_t max = 8192;
	char *line = fx_calloc(fx, max + 1024);
	memcpy(line, "SITE ", 5);
	memset(line + 5, 'a', max - 7);
	memcpy(line + max - 2, "\r\n", 2);
	say(&c, c.cli, line, max);
	char *got = fx_calloc(fx, max);
	if (sock_recv_exact(c.srv, got, max, HANG) != 0)
		fail_with_log(fx, "the server did not get the 8192-byte command: %s",
			      strerror(errno));
	if (memcmp(got, line, max) != 0)
		fail_with_log(fx, "the 8192-byte command arrived changed");
	srv_say(&c, "200 SITE ok.\r\n");
	cli_expect(&c, "200 SITE ok.\r\n");

	memset(line + 5, 'b', max + 500);
	memcpy(line + max + 505, "\r\n", 2);
	say(&c, c.cli, line, max + 507);
	expect_421_and_end(&c, true);
	const char *ended[] = { "ftp: ending the control connection: command line too long", NULL };
	wait_log_or_fail(fx, ended, "ending the control connection: command line too long");

	/* A reply line too long; it starts like a multi-line reply. */
	ctl_open(&w, &c);
	cli_say(&c, "HELP\r\n");
	srv_expect(&c, "HELP\r\n");
	memcpy(line, "214-", 4);
	memset(line + 4, 'c', max + 100);
	say(&c, c.srv, line, max + 104);
	expect_421_and_end(&c, false);
	const char *ended2[] = { "ftp: ending the control connection: reply line too long", NULL };
	wait_log_or_fail(fx, ended2, "ending the control connection: reply line too long");
	stop_and_expect_totals(fx, 0, 0, 0, 0, 0, 0);
}

/* ---- AUTH ---------------------------------------------------------------------------------------------- */

/*
 * AUTH TLS: the client's next line waits in the kernel until the server
 * answers; after 234 every byte passes untouched both ways (a bounce PORT,
 * a 227, binary without line ends, far over the line limit), the FIN too.
 * AUTH answered 504 leaves the filter on.
 */
static void test_auth_tls_makes_the_channel_opaque(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);

	cli_say(&c, "AUTH TLS\r\n");
	srv_expect(&c, "AUTH TLS\r\n");
	/* Sent before the 234 (a TLS ClientHello would be): must not be read as FTP. */
	cli_say(&c, "PORT 127,0,0,3,4,1\r\n");
	srv_say(&c, "234 AUTH TLS successful.\r\n");
	cli_expect(&c, "234 AUTH TLS successful.\r\n");
	srv_expect(&c, "PORT 127,0,0,3,4,1\r\n");
	const char pasv227[] = "227 Entering Passive Mode (10,9,9,9,1,2).\r\n";
	srv_say(&c, pasv227);
	cli_expect(&c, pasv227);
	cli_say(&c, "LPSV\r\n");
	srv_expect(&c, "LPSV\r\n");
	/* Binary both ways, 200 KiB with no line structure, then the FINs. */
	data_both_ways(fx, c.cli, c.srv, 200 * 1024, 150 * 1024, 0x7151, "after 234");
	expect_listeners(&w, 0, "after the opaque session");
	close_tracked(c.cli);
	close_tracked(c.srv);

	ctl_open(&w, &c);
	cli_say(&c, "AUTH TLS\r\n");
	srv_expect(&c, "AUTH TLS\r\n");
	srv_say(&c, "504 Security mechanism not understood.\r\n");
	cli_expect(&c, "504 Security mechanism not understood.\r\n");
	refused_before_noop(&c, "PORT 127,0,0,3,4,1\r\n", r_foreign);
	ctl_quit(&c);
	stop_and_expect_totals(fx, 0, 0, 0, 0, 0, 1);
}

/* ---- ABOR and urgent data --------------------------------------------------------------------------------- */

/* Waits until fd has urgent data pending (POLLPRI). */
static void wait_urgent(struct fx *fx, int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLPRI };
	int64_t deadline = now_ms() + HANG;
	while (poll(&p, 1, 50) <= 0 || !(p.revents & POLLPRI)) {
		if (now_ms() >= deadline)
			fail_with_log(fx, "the server never saw urgent data");
	}
}

static int at_mark(int fd)
{
	int mark = -1;
	if (ioctl(fd, SIOCATMARK, &mark) != 0)
		return -1;
	return mark;
}

/*
 * ABOR as RFC 959 sends it (IAC IP, then IAC DM with DM the urgent byte):
 * the server, with SO_OOBINLINE off, finds the mark right after IAC IP IAC,
 * reads DM with MSG_OOB, then "ABOR" intact. As Python's ftplib sends it
 * ("ABOR\r\n" with MSG_OOB, the LF urgent): a server with SO_OOBINLINE on
 * finds the mark before the LF.
 */
static void test_abor_urgent_data_passed_on(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);

	/* RFC 959 style. */
	if (send(c.cli, "\xff\xf4\xff", 3, MSG_NOSIGNAL) != 3 ||
	    send(c.cli, "\xf2", 1, MSG_OOB | MSG_NOSIGNAL) != 1 ||
	    send(c.cli, "ABOR\r\n", 6, MSG_NOSIGNAL) != 6)
		fail_with_log(fx, "sending ABOR: %s", strerror(errno));
	char head[3];
	if (sock_recv_exact(c.srv, head, 3, HANG) != 0)
		fail_with_log(fx, "the server got no IAC IP IAC: %s", strerror(errno));
	if (memcmp(head, "\xff\xf4\xff", 3) != 0)
		fail_with_log(fx, "the server got %02x %02x %02x, expected IAC IP IAC",
			      (unsigned char)head[0], (unsigned char)head[1],
			      (unsigned char)head[2]);
	wait_urgent(fx, c.srv);
	if (at_mark(c.srv) != 1)
		fail_with_log(fx, "the urgent mark is not right after IAC IP IAC");
	char oob = 0;
	if (recv(c.srv, &oob, 1, MSG_OOB) != 1 || (unsigned char)oob != 0xf2)
		fail_with_log(fx, "recv(MSG_OOB) on the server: %s, byte %02x, expected DM (f2)",
			      strerror(errno), (unsigned char)oob);
	srv_expect(&c, "ABOR\r\n");
	srv_say(&c, "426 Transfer aborted.\r\n226 Abort successful.\r\n");
	cli_expect(&c, "426 Transfer aborted.\r\n");
	cli_expect(&c, "226 Abort successful.\r\n");

	/* ftplib style, and the server keeps urgent data inline. */
	int on = 1;
	setsockopt(c.srv, SOL_SOCKET, SO_OOBINLINE, &on, sizeof on);
	if (send(c.cli, "ABOR\r\n", 6, MSG_OOB | MSG_NOSIGNAL) != 6)
		fail_with_log(fx, "sending ABOR with MSG_OOB: %s", strerror(errno));
	wait_urgent(fx, c.srv);
	char got[6];
	int mark_at = -1;
	for (int i = 0; i < 6; i++) {
		if (at_mark(c.srv) == 1 && mark_at < 0)
			mark_at = i;
		if (sock_recv_exact(c.srv, got + i, 1, HANG) != 0)
			fail_with_log(fx, "the server got %d bytes of ABOR: %s", i, strerror(errno));
	}
	if (memcmp(got, "ABOR\r\n", 6) != 0 || mark_at != 5)
		fail_with_log(fx, "the server got \"%.4s\" with the urgent mark at byte %d, expected "
			      "\"ABOR\\r\\n\" with the mark before the LF (5)", got, mark_at);
	srv_say(&c, "225 No transfer to abort.\r\n");
	cli_expect(&c, "225 No transfer to abort.\r\n");
	ctl_quit(&c);
	stop_and_expect_totals(fx, 0, 0, 0, 0, 0, 0);
}

/* ---- data port ranges ------------------------------------------------------------------------------------- */

static bool in_range(uint16_t p, uint16_t lo, uint16_t hi)
{
	return p >= lo && p <= hi;
}

/*
 * ftp.data_ports for one forward, ftp_data_ports for another: passive and
 * active ports within them; with a range all taken, PASV and PORT get 425
 * (the PORT never reaches the server).
 */
static void test_data_port_ranges(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct world w;
	world_server(fx, &w);
	/* P0: forward "global" (data P2-P3); P1: forward "own" (data P4-P5). */
	char *t = NULL;
	assert_true(asprintf(&t,
			     "ftp = { data_ports = \"@P2@-@P3@\"; };\n"
			     "forwards = (\n"
			     "  { name = \"global\"; protocol = \"tcp\"; ftp = true;\n"
			     "    external_address = \"" RELAY_IP "\"; external_port = @P0@;\n"
			     "    internal_ip = \"" SERVER_IP "\"; internal_port = %u; },\n"
			     "  { name = \"own\"; protocol = \"tcp\"; ftp = true;\n"
			     "    ftp_data_ports = \"@P4@-@P5@\";\n"
			     "    external_address = \"" RELAY_IP "\"; external_port = @P1@;\n"
			     "    internal_ip = \"" SERVER_IP "\"; internal_port = %u; }\n"
			     ");\n",
			     w.srv_port, w.srv_port) > 0);
	uint16_t base = fx_start_relay(fx, 6, PORTS_V4, t);
	free(t);
	world_started(&w, base);
	uint16_t g_lo = base + 2, g_hi = base + 3, o_lo = base + 4, o_hi = base + 5;
	int dl = track(sock_listen_at(SERVER_IP, 0, 8));

	struct ctl g;
	ctl_open(&w, &g);
	for (int i = 0; i < 3; i++) {
		uint16_t x = passive(&g, "PASV\r\n", sock_port(dl));
		if (!in_range(x, g_lo, g_hi))
			fail_with_log(fx, "passive port %u outside ftp.data_ports %u-%u", x, g_lo,
				      g_hi);
		use_passive_port(&g, dl, x, 0x4400 + 2 * (uint64_t)i);
	}
	int cl = track(sock_listen_at(CLIENT_IP, 0, 4));
	char cmd[64];
	snprintf(cmd, sizeof cmd, "PORT 127,0,0,4,%u,%u\r\n", sock_port(cl) >> 8,
		 sock_port(cl) & 0xff);
	cli_say(&g, cmd);
	uint16_t y = relay_port_command(&g);
	if (!in_range(y, g_lo, g_hi))
		fail_with_log(fx, "active port %u outside ftp.data_ports %u-%u", y, g_lo, g_hi);
	srv_say(&g, "200 PORT command successful.\r\n");
	cli_expect(&g, "200 PORT command successful.\r\n");
	int sd = track(sock_connect_from(SERVER_IP, g.relay_inner, y, HANG));
	if (sd < 0)
		fail_with_log(fx, "connect to the active port: %s", strerror(errno));
	int cd = accept_or_fail(fx, cl, "the client's data port");
	data_both_ways(fx, cd, sd, 1000, 1000, 0x4410, "active data in range");
	close_tracked(cd);
	close_tracked(sd);
	ctl_quit(&g);

	/* The forward with its own range, on its own port. */
	w.base = (uint16_t)(base + 1);
	struct ctl o;
	ctl_open(&w, &o);
	uint16_t x = passive(&o, "PASV\r\n", sock_port(dl));
	if (!in_range(x, o_lo, o_hi))
		fail_with_log(fx, "passive port %u outside ftp_data_ports %u-%u", x, o_lo, o_hi);
	use_passive_port(&o, dl, x, 0x4420);

	/* Every port of the range taken, on both of the relay's addresses. */
	for (uint16_t p = o_lo; p <= o_hi; p++) {
		if (track(sock_listen_at(RELAY_IP, p, 1)) < 0 ||
		    track(sock_listen_at(o.relay_inner, p, 1)) < 0)
			fail_with_log(fx, "cannot take port %u: %s", p, strerror(errno));
	}
	cli_say(&o, "PASV\r\n");
	srv_expect(&o, "PASV\r\n");
	char reply[128];
	bogus_227(sock_port(dl), reply, sizeof reply);
	srv_say(&o, reply);
	cli_expect(&o, "425 Cannot open data connection.\r\n");
	const char *warn[] = { "warn", "[own]", "ftp: cannot open a data listener on " RELAY_IP ":",
			       "Address already in use", NULL };
	wait_log_or_fail(fx, warn, "cannot open a data listener ... Address already in use");
	refused_before_noop(&o, cmd, "425 Cannot open data connection.\r\n");
	expect_listeners(&w, 0, "with the range taken");
	ctl_quit(&o);
	stop_and_expect_totals(fx, 5, 5, 0, 0, 0, 2);
}

/* ---- the pending listener limit ------------------------------------------------------------------------------ */

/* Five PASVs without connecting: the first port closes, the last four stay open and work. */
static void test_at_most_four_pending_listeners(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at(SERVER_IP, 0, 8));
	uint16_t ports[5];
	for (int i = 0; i < 5; i++) {
		ports[i] = passive(&c, "PASV\r\n", sock_port(dl));
		expect_listeners(&w, i < 4 ? i + 1 : 4, "while opening passive ports");
	}
	expect_connect_refused(fx, CLIENT_IP, RELAY_IP, ports[0], "the oldest of five passive ports");
	for (int i = 1; i < 5; i++)
		use_passive_port(&c, dl, ports[i], 0x4e00 + 2 * (uint64_t)i);
	expect_listeners(&w, 0, "after using the four");
	ctl_quit(&c);
	stop_and_expect_totals(fx, 5, 4, 0, 1, 0, 0);
}

/* ---- the command queue ------------------------------------------------------------------------------------- */

/*
 * Twenty commands in one write: the server gets sixteen (the commands in
 * flight at most), the rest as replies come; the client gets the twenty
 * replies in order.
 */
static void test_at_most_sixteen_commands_in_flight(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);
	char burst[20 * 16] = "";
	for (int i = 0; i < 20; i++) {
		char one[16];
		snprintf(one, sizeof one, "NOOP %d\r\n", i);
		strcat(burst, one);
	}
	cli_say(&c, burst);
	char want[32];
	for (int i = 0; i < 16; i++) {
		snprintf(want, sizeof want, "NOOP %d\r\n", i);
		srv_expect(&c, want);
	}
	/* Can only pass wrongly (if the 17th came later than this): never a false failure. */
	struct pollfd p = { .fd = c.srv, .events = POLLIN };
	if (poll(&p, 1, 200) != 0)
		fail_with_log(fx, "a 17th command reached the server with 16 unanswered");
	for (int i = 0; i < 20; i++) {
		snprintf(want, sizeof want, "200 NOOP %d ok.\r\n", i);
		srv_say(&c, want);
		if (i + 16 < 20) {
			char next[32];
			snprintf(next, sizeof next, "NOOP %d\r\n", i + 16);
			srv_expect(&c, next);
		}
	}
	for (int i = 0; i < 20; i++) {
		snprintf(want, sizeof want, "200 NOOP %d ok.\r\n", i);
		cli_expect(&c, want);
	}
	ctl_quit(&c);
	stop_and_expect_totals(fx, 0, 0, 0, 0, 0, 0);
}

/* ---- a long transfer and the idle timeout -------------------------------------------------------------------- */

/*
 * With tcp.idle_timeout = 1.0, a control connection silent for 2.5 s while
 * its data connection carries a trickle stays open; the data connection's
 * reset reaches the client; once no data connection is open the control
 * connection is closed for idleness.
 */
static void test_transfer_keeps_control_alive(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, "tcp = { idle_timeout = 1.0; };", NULL);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	uint16_t x = passive(&c, "PASV\r\n", sock_port(dl));
	int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
	if (d < 0)
		fail_with_log(fx, "connect to the passive port: %s", strerror(errno));
	int sd = accept_or_fail(fx, dl, "the server's data port");
	int64_t start = now_ms();
	for (int i = 0; now_ms() - start < 2500; i++) {
		char b = (char)i, got = 0;
		if (sock_send_all(d, &b, 1, HANG) != 0 || sock_recv_exact(sd, &got, 1, HANG) != 0 ||
		    got != b)
			fail_with_log(fx, "the trickle stopped after %d bytes (%lld ms): %s", i,
				      (long long)(now_ms() - start), strerror(errno));
		sleep_ms(100);
	}
	cli_say(&c, "NOOP\r\n");
	srv_expect(&c, "NOOP\r\n");
	srv_say(&c, "200 NOOP ok.\r\n");
	cli_expect(&c, "200 NOOP ok.\r\n");

	/* The server resets the data connection: the client sees the reset. */
	sock_close_reset(sd);
	close_tracked(sd);
	int rc = sock_wait_close(d, HANG, NULL);
	bool reset = rc == ECONNRESET || (rc == 0 && sock_tcp_state(d) == TCP_CLOSE);
	if (!reset)
		fail_with_log(fx, "the client's data connection ended with %s, expected a reset",
			      rc == 0 ? "EOF" : rc < 0 ? "nothing (timeout)" : strerror(rc));
	close_tracked(d);
	const char *closed[] = { "ftp passive data closed", "reset by internal", NULL };
	wait_log_or_fail(fx, closed, "ftp passive data closed ... reset by internal");

	/* Now nothing keeps the control connection: it goes within the idle timeout. */
	int64_t t0 = now_ms();
	rc = sock_wait_close(c.cli, HANG, NULL);
	int64_t idle = now_ms() - t0;
	if (rc != 0)
		fail_with_log(fx, "the idle control connection ended with %s, expected EOF",
			      rc < 0 ? "nothing (timeout)" : strerror(rc));
	if (idle > 2500 * hang_scale())
		fail_with_log(fx, "the control connection was closed %lld ms after its data "
			      "connection (idle_timeout 1.0 s)", (long long)idle);
	const char *idled[] = { "tcp closed " CLIENT_IP ":", "idle timeout", NULL };
	wait_log_or_fail(fx, idled, "tcp closed ... idle timeout for the control connection");
	stop_and_expect_totals(fx, 1, 1, 0, 0, 0, 0);
	if (!relay_log_contains(&fx->relay, "stopped. tcp: 1 connections (0 failed to connect, "
				"1 reset, 1 idle timeouts)"))
		fail_with_log(fx, "the closing tcp line does not count 1 reset and 1 idle timeout");
}

/* ---- where the relay connects for a data connection ---------------------------------------------------------------- */

/* A port on ip with nothing listening (bound, then closed). */
static uint16_t dead_port_at(const char *ip)
{
	int fd = sock_listen_at(ip, 0, 1);
	assert_true(fd >= 0);
	uint16_t port = sock_port(fd);
	close(fd);
	return port;
}

/*
 * When the relay cannot reach the other end of a data connection (the
 * server's data port, the client's port), the side that connected is reset.
 */
static void test_data_target_refused_resets(void **state)
{
	struct fx *fx = *state;
	struct world w;
	start_ftp_relay(fx, &w, 1, NULL, NULL);
	struct ctl c;
	ctl_open(&w, &c);

	uint16_t dead = dead_port_at(SERVER_IP);
	uint16_t x = passive(&c, "PASV\r\n", dead);
	expect_connect_reset(fx, CLIENT_IP, RELAY_IP, x, "the passive port with no server behind");
	char target[64];
	snprintf(target, sizeof target, "-> " SERVER_IP ":%u:", dead);
	const char *passive_closed[] = { "ftp passive data closed " CLIENT_IP ":", target,
					 "connect refused", NULL };
	wait_log_or_fail(fx, passive_closed, "ftp passive data closed ... connect refused");

	uint16_t dead_client = dead_port_at(CLIENT_IP);
	char cmd[64];
	snprintf(cmd, sizeof cmd, "PORT 127,0,0,4,%u,%u\r\n", dead_client >> 8, dead_client & 0xff);
	cli_say(&c, cmd);
	uint16_t y = relay_port_command(&c);
	srv_say(&c, "200 PORT command successful.\r\n");
	cli_expect(&c, "200 PORT command successful.\r\n");
	expect_connect_reset(fx, SERVER_IP, c.relay_inner, y, "the active port with no client behind");
	snprintf(target, sizeof target, "-> " CLIENT_IP ":%u:", dead_client);
	const char *active_closed[] = { "ftp active data closed " SERVER_IP ":", target,
					"connect refused", NULL };
	wait_log_or_fail(fx, active_closed, "ftp active data closed ... connect refused");
	ctl_quit(&c);
	stop_and_expect_totals(fx, 2, 2, 0, 0, 0, 0);
	if (!relay_log_contains(&fx->relay, "stopped. tcp: 1 connections (2 failed to connect,"))
		fail_with_log(fx, "the closing tcp line does not count 2 failed connects");
}

/*
 * A forward on the wildcard address: each client's data port is on the
 * address that client connected to (127.0.0.2, 127.0.0.6, and ::1 when the
 * wildcard is dual-stack).
 */
static void test_wildcard_forward_answers_from_the_address_used(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	bool v6 = ipv6_loopback_available();
	struct world w;
	world_server(fx, &w);
	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"any\"; protocol = \"tcp\"; ftp = true;\n"
			     "    external_address = \"%s\"; external_port = @P0@;\n"
			     "    internal_ip = \"" SERVER_IP "\"; internal_port = %u; }\n"
			     ");\n",
			     v6 ? "::" : "0.0.0.0", w.srv_port) > 0);
	uint16_t base = fx_start_relay(fx, 1, v6 ? PORTS_V4 | PORTS_V6 : PORTS_V4, t);
	free(t);
	world_started(&w, base);
	int dl = track(sock_listen_at(SERVER_IP, 0, 8));
	const char *outer[] = { "127.0.0.2", "127.0.0.6", "::1" };
	unsigned used = 0;
	for (int i = 0; i < (v6 ? 3 : 2); i++) {
		w.relay_ip = outer[i];
		struct ctl c;
		ctl_open_from(&w, &c, i == 2 ? "::1" : CLIENT_IP);
		uint16_t x = passive(&c, i == 2 ? "EPSV\r\n" : "PASV\r\n", sock_port(dl));
		int d = track(sock_connect_from(i == 2 ? "::1" : CLIENT_IP, outer[i], x, HANG));
		if (d < 0)
			fail_with_log(fx, "connect to %s port %u: %s", outer[i], x, strerror(errno));
		int sd = accept_or_fail(fx, dl, "the server's data port");
		data_both_ways(fx, d, sd, 20000, 30000, 0xa7 + 2 * (uint64_t)i, outer[i]);
		close_tracked(d);
		close_tracked(sd);

		/* Active: the relay reaches the client from the address the client used. */
		const char *client_ip = i == 2 ? "::1" : CLIENT_IP;
		int cl = track(sock_listen_at(client_ip, 0, 4));
		char cmd[64];
		if (i == 2)
			snprintf(cmd, sizeof cmd, "EPRT |2|::1|%u|\r\n", sock_port(cl));
		else
			snprintf(cmd, sizeof cmd, "PORT 127,0,0,4,%u,%u\r\n", sock_port(cl) >> 8,
				 sock_port(cl) & 0xff);
		cli_say(&c, cmd);
		uint16_t y = relay_port_command(&c);
		srv_say(&c, "200 PORT command successful.\r\n");
		cli_expect(&c, "200 PORT command successful.\r\n");
		sd = track(sock_connect_from(SERVER_IP, c.relay_inner, y, HANG));
		if (sd < 0)
			fail_with_log(fx, "the server's connect to the active port: %s", strerror(errno));
		int cd = accept_or_fail(fx, cl, "the client's data port");
		expect_peer_ip(fx, cd, outer[i], "the client's data connection");
		data_both_ways(fx, cd, sd, 10000, 5000, 0xb7 + 2 * (uint64_t)i, cmd);
		close_tracked(cd);
		close_tracked(sd);
		ctl_quit(&c);
		used += 2;
	}
	stop_and_expect_totals(fx, used, used, 0, 0, 0, 0);
}

/* ---- IPv6 ------------------------------------------------------------------------------------------------------- */

static void skip_without_ipv6(void)
{
	if (!ipv6_loopback_available()) {
		print_message("no IPv6 loopback; skipping\n");
		skip();
	}
}

/*
 * An IPv6 client in front of an IPv4 server: EPSV reaches the server as
 * PASV and the client gets 229 for the relay's IPv6 address; EPRT |2| reaches
 * it as PORT with the relay's IPv4 address; PASV, EPRT |1| and PORT are refused.
 */
static void test_ipv6_client_ipv4_server(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	skip_without_ipv6();
	struct world w;
	world_server_at(fx, &w, "::1", SERVER_IP);
	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"ftp6\"; protocol = \"tcp\"; ftp = true;\n"
			     "    external_address = \"::1\"; external_port = @P0@;\n"
			     "    internal_ip = \"" SERVER_IP "\"; internal_port = %u; }\n"
			     ");\n",
			     w.srv_port) > 0);
	uint16_t base = fx_start_relay(fx, 1, PORTS_V6, t);
	free(t);
	world_started(&w, base);
	struct ctl c;
	ctl_open_from(&w, &c, "::1");
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));

	uint16_t x = passive(&c, "EPSV\r\n", sock_port(dl));
	int d = track(sock_connect_from("::1", "::1", x, HANG));
	if (d < 0)
		fail_with_log(fx, "connect to [::1]:%u: %s", x, strerror(errno));
	int sd = accept_or_fail(fx, dl, "the server's data port");
	expect_peer_ip(fx, sd, c.relay_inner, "the server's data connection");
	data_both_ways(fx, d, sd, 500000, 400000, 0x6a, "EPSV over IPv6");
	close_tracked(d);
	close_tracked(sd);

	int cl = track(sock_listen_at("::1", 0, 4));
	char cmd[64];
	snprintf(cmd, sizeof cmd, "EPRT |2|::1|%u|\r\n", sock_port(cl));
	cli_say(&c, cmd);
	uint16_t y = relay_port_command(&c);
	srv_say(&c, "200 EPRT command successful.\r\n");
	cli_expect(&c, "200 EPRT command successful.\r\n");
	sd = track(sock_connect_from(SERVER_IP, c.relay_inner, y, HANG));
	if (sd < 0)
		fail_with_log(fx, "the server's connect to the active port: %s", strerror(errno));
	int cd = accept_or_fail(fx, cl, "the client's data port");
	expect_peer_ip(fx, cd, "::1", "the client's data connection");
	data_both_ways(fx, cd, sd, 300000, 200000, 0x6c, "EPRT over IPv6");
	close_tracked(cd);
	close_tracked(sd);

	refused_before_noop(&c, "PASV\r\n", "500 PASV cannot name an IPv6 address; use EPSV.\r\n");
	refused_before_noop(&c, "EPRT |1|127.0.0.4|5000|\r\n",
			    "522 Network protocol not supported, use (2)\r\n");
	refused_before_noop(&c, "PORT 127,0,0,1,20,0\r\n", r_syntax);
	refused_before_noop(&c, "EPRT |2|::2|5000|\r\n", r_foreign);
	ctl_quit(&c);
	stop_and_expect_totals(fx, 2, 2, 0, 0, 0, 4);
}

/*
 * An IPv4 client in front of an IPv6 server: PASV reaches the server as EPSV
 * and its 229 becomes the client's 227; PORT reaches it as EPRT |2| naming
 * the relay's IPv6 address.
 */
static void test_ipv4_client_ipv6_server(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	skip_without_ipv6();
	struct world w;
	world_server_at(fx, &w, RELAY_IP, "::1");
	char *t = NULL;
	assert_true(asprintf(&t,
			     "forwards = (\n"
			     "  { name = \"ftp4\"; protocol = \"tcp\"; ftp = true;\n"
			     "    external_address = \"" RELAY_IP "\"; external_port = @P0@;\n"
			     "    internal_ip = \"::1\"; internal_port = %u; }\n"
			     ");\n",
			     w.srv_port) > 0);
	uint16_t base = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	world_started(&w, base);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at("::1", 0, 4));
	char reply[128], line[256];
	snprintf(reply, sizeof reply, "229 Entering Extended Passive Mode (|||%u|)\r\n",
		 sock_port(dl));

	for (int round = 0; round < 2; round++) {
		cli_say(&c, round == 0 ? "PASV\r\n" : "EPSV\r\n");
		srv_expect(&c, "EPSV\r\n");
		srv_say(&c, reply);
		get_line(&c, c.cli, line, sizeof line);
		uint16_t x = round == 0 ? relay_227_port(&c, line) : relay_229_port(&c, line);
		int d = track(sock_connect_from(CLIENT_IP, RELAY_IP, x, HANG));
		if (d < 0)
			fail_with_log(fx, "connect to the passive port: %s", strerror(errno));
		int sd = accept_or_fail(fx, dl, "the server's data port");
		expect_peer_ip(fx, sd, "::1", "the server's data connection");
		data_both_ways(fx, d, sd, 200000, 300000, 0x46 + 2 * (uint64_t)round, line);
		close_tracked(d);
		close_tracked(sd);
	}

	int cl = track(sock_listen_at(CLIENT_IP, 0, 4));
	char cmd[64];
	snprintf(cmd, sizeof cmd, "PORT 127,0,0,4,%u,%u\r\n", sock_port(cl) >> 8,
		 sock_port(cl) & 0xff);
	cli_say(&c, cmd);
	get_line(&c, c.srv, line, sizeof line);
	unsigned y = 0;
	char want[64], s1[512];
	if (sscanf(line, "EPRT |2|::1|%u|", &y) == 1)
		snprintf(want, sizeof want, "EPRT |2|::1|%u|\r\n", y);
	if (y == 0 || y > 65535 || strcmp(line, want) != 0)
		fail_with_log(fx, "the server got \"%s\", expected \"EPRT |2|::1|PORT|\\r\\n\"",
			      shown(line, s1, sizeof s1));
	srv_say(&c, "200 EPRT command successful.\r\n");
	cli_expect(&c, "200 EPRT command successful.\r\n");
	int sd = track(sock_connect_from("::1", "::1", (uint16_t)y, HANG));
	if (sd < 0)
		fail_with_log(fx, "the server's connect to [::1]:%u: %s", y, strerror(errno));
	int cd = accept_or_fail(fx, cl, "the client's data port");
	expect_peer_ip(fx, cd, RELAY_IP, "the client's data connection");
	data_both_ways(fx, cd, sd, 250000, 150000, 0x4a, "PORT to an IPv6 server");
	close_tracked(cd);
	close_tracked(sd);
	ctl_quit(&c);
	stop_and_expect_totals(fx, 3, 3, 0, 0, 0, 0);
}

/* ---- configuration -------------------------------------------------------------------------------------------------- */

/* Runs the relay on config text (not waiting for ready) and returns its exit code. */
static int run_config(struct fx *fx, const char *text, const char *const *extra)
{
	fx_require_relay();
	if (fx->relay_inited)
		relay_destroy(&fx->relay);
	relay_init(&fx->relay);
	fx->relay_inited = true;
	const char *path = relay_write_config(&fx->relay, text);
	assert_non_null(path);
	const char *args[16] = { "-c", path };
	int n = 2;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	if (relay_spawn(&fx->relay, args) != 0)
		fail_msg("cannot spawn the relay: %s", strerror(errno));
	int code = relay_wait_exit(&fx->relay, HANG);
	if (code < 0)
		fail_with_log(fx, "the relay still runs after %d ms", HANG);
	return code;
}

static void expect_config_error(struct fx *fx, const char *text, int line, const char *words)
{
	int code = run_config(fx, text, NULL);
	char where[256];
	snprintf(where, sizeof where, "%s:%d:", fx->relay.config_path, line);
	const char *subs[] = { where, words, NULL };
	if (code != 1 || !relay_log_line_with(&fx->relay, subs))
		fail_with_log(fx, "exit %d; expected 1 and a line with \"%s\" and \"%s\"", code,
			      where, words);
}

/*
 * ftp = true on udp or both, and ftp_data_ports without ftp: exit 1 naming
 * the file and line. --check shows "ftp helper" (and the data ports).
 */
static void test_config_errors_and_check(void **state)
{
	struct fx *fx = *state;
	expect_config_error(fx,
			    "# ftp on udp\n"
			    "forwards = (\n"
			    "  { name = \"bad\"; protocol = \"udp\"; external_address = \"127.0.0.2\";\n"
			    "    external_port = 2121; internal_ip = \"127.0.0.5\"; internal_port = 21;\n"
			    "    ftp = true; }\n"
			    ");\n",
			    5, "ftp = true needs protocol = \"tcp\", not \"udp\"");
	expect_config_error(fx,
			    "forwards = (\n"
			    "  { name = \"bad\"; protocol = \"both\"; external_address = \"127.0.0.2\";\n"
			    "    ftp = true;\n"
			    "    external_port = 2121; internal_ip = \"127.0.0.5\"; internal_port = 21; }\n"
			    ");\n",
			    3, "ftp = true needs protocol = \"tcp\", not \"both\"");
	expect_config_error(fx,
			    "forwards = (\n"
			    "  { name = \"bad\"; protocol = \"tcp\"; external_address = \"127.0.0.2\";\n"
			    "    external_port = 2121; internal_ip = \"127.0.0.5\"; internal_port = 21;\n"
			    "    ftp_data_ports = \"30000-30009\"; }\n"
			    ");\n",
			    4, "ftp_data_ports needs ftp = true");
	expect_config_error(fx,
			    "forwards = (\n"
			    "  { name = \"bad\"; protocol = \"tcp\"; external_address = \"127.0.0.2\";\n"
			    "    external_port = 2121; internal_ip = \"127.0.0.5\"; internal_port = 21;\n"
			    "    ftp = false; ftp_data_ports = \"30000-30009\"; }\n"
			    ");\n",
			    4, "ftp_data_ports needs ftp = true");

	const char *check[] = { "--check", NULL };
	int code = run_config(fx,
			      "ftp = { data_ports = \"30000-30009\"; data_timeout = 2.5; };\n"
			      "forwards = (\n"
			      "  { name = \"inherits\"; protocol = \"tcp\"; ftp = true;\n"
			      "    external_address = \"127.0.0.2\"; external_port = 2121;\n"
			      "    internal_ip = \"127.0.0.5\"; internal_port = 21; },\n"
			      "  { name = \"own\"; protocol = \"tcp\"; ftp = true;\n"
			      "    ftp_data_ports = \"31000-31009\";\n"
			      "    external_address = \"127.0.0.2\"; external_port = 2122;\n"
			      "    internal_ip = \"127.0.0.5\"; internal_port = 21; },\n"
			      "  { name = \"plain\"; protocol = \"tcp\";\n"
			      "    external_address = \"127.0.0.2\"; external_port = 2123;\n"
			      "    internal_ip = \"127.0.0.5\"; internal_port = 21; }\n"
			      ");\n",
			      check);
	char *out = relay_out_copy(&fx->relay);
	fprintf(stderr, "--check:\n%s", out);
	bool ok = code == 0 &&
		  strstr(out, "inherits  tcp  127.0.0.2:2121 -> 127.0.0.5:21  ftp helper, data "
			      "ports 30000-30009\n") &&
		  strstr(out, "own  tcp  127.0.0.2:2122 -> 127.0.0.5:21  ftp helper, data ports "
			      "31000-31009\n") &&
		  strstr(out, "plain  tcp  127.0.0.2:2123 -> 127.0.0.5:21\n");
	free(out);
	if (!ok)
		fail_with_log(fx, "--check exit %d; expected 0 and the three lines", code);
}

/* -L ftp:ADDR:PORT:HOST:PORT runs the helper: --check says so, and PASV is rewritten. */
static void test_dash_L_ftp(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct world w;
	world_server(fx, &w);
	char spec[96];
	snprintf(spec, sizeof spec, "ftp:" RELAY_IP ":@P0@:" SERVER_IP ":%u", w.srv_port);
	const char *extra[] = { "-L", spec, NULL };
	uint16_t base = fx_start_relay_args(fx, 1, PORTS_V4, NULL, extra);
	world_started(&w, base);
	char forward[128];
	snprintf(forward, sizeof forward, "forward ftp:%u  tcp  " RELAY_IP ":%u -> " SERVER_IP
		 ":%u  ftp helper", base, base, w.srv_port);
	if (!relay_log_contains(&fx->relay, forward))
		fail_with_log(fx, "no \"%s\" in the log", forward);
	struct ctl c;
	ctl_open(&w, &c);
	int dl = track(sock_listen_at(SERVER_IP, 0, 4));
	uint16_t x = passive(&c, "PASV\r\n", sock_port(dl));
	use_passive_port(&c, dl, x, 0x1f7);
	ctl_quit(&c);
	stop_and_expect_totals(fx, 1, 1, 0, 0, 0, 0);
}

/* A tcp forward without ftp = true never touches FTP: 227, PORT and LPSV pass as they are. */
static void test_plain_forward_untouched(void **state)
{
	struct fx *fx = *state;
	fx_require_relay();
	struct world w;
	world_server(fx, &w);
	char *t = NULL;
	assert_true(asprintf(&t,
			     "ftp = { data_timeout = 5.0; };\n"
			     "forwards = (\n"
			     "  { name = \"plain\"; protocol = \"tcp\";\n"
			     "    external_address = \"" RELAY_IP "\"; external_port = @P0@;\n"
			     "    internal_ip = \"" SERVER_IP "\"; internal_port = %u; }\n"
			     ");\n",
			     w.srv_port) > 0);
	uint16_t base = fx_start_relay(fx, 1, PORTS_V4, t);
	free(t);
	world_started(&w, base);
	struct ctl c;
	ctl_open(&w, &c);
	cli_say(&c, "PASV\r\n");
	srv_expect(&c, "PASV\r\n");
	const char bogus[] = "227 Entering Passive Mode (10,9,9,9,117,48).\r\n";
	srv_say(&c, bogus);
	cli_expect(&c, bogus);
	cli_say(&c, "PORT 127,0,0,3,4,1\r\nLPSV\r\nEPSV ALL\r\n");
	srv_expect(&c, "PORT 127,0,0,3,4,1\r\n");
	srv_expect(&c, "LPSV\r\n");
	srv_expect(&c, "EPSV ALL\r\n");
	expect_listeners(&w, 0, "on a plain forward");
	ctl_quit(&c);
	fx_stop_relay_ok(fx);
	if (relay_log_contains(&fx->relay, "ftp"))
		fail_with_log(fx, "a plain forward's log mentions ftp");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		FTP_TEST(test_pasv_rewritten_data_intact_one_shot),
		FTP_TEST(test_epsv_229_and_server_forms),
		FTP_TEST(test_port_eprt_active_and_stealing),
		FTP_TEST(test_passive_port_only_for_the_client),
		FTP_TEST(test_bounce_and_malformed_commands_refused),
		FTP_TEST(test_unsolicited_227_untouched),
		FTP_TEST(test_split_pipelined_and_multiline),
		FTP_TEST(test_data_timeout_closes_unused_ports),
		FTP_TEST(test_long_lines_end_the_session),
		FTP_TEST(test_auth_tls_makes_the_channel_opaque),
		FTP_TEST(test_abor_urgent_data_passed_on),
		FTP_TEST(test_data_port_ranges),
		FTP_TEST(test_at_most_four_pending_listeners),
		FTP_TEST(test_at_most_sixteen_commands_in_flight),
		FTP_TEST(test_transfer_keeps_control_alive),
		FTP_TEST(test_data_target_refused_resets),
		FTP_TEST(test_wildcard_forward_answers_from_the_address_used),
		FTP_TEST(test_ipv6_client_ipv4_server),
		FTP_TEST(test_ipv4_client_ipv6_server),
		FTP_TEST(test_config_errors_and_check),
		FTP_TEST(test_dash_L_ftp),
		FTP_TEST(test_plain_forward_untouched),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
