/*
 * test_ftp_filter.c - one FTP control connection through ftp_filter, driven
 * with plain buffers and fake hooks (which record their calls and hand out
 * canned listener addresses). Every test asserts the exact bytes each side
 * gets: rewrites, the relay's refusals and their order among the server's
 * replies, lines split or pipelined, multi-line replies, bounds, EOF, urgent
 * data, AUTH TLS.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "portrelay/ftp_filter.h"
#include "portrelay/ftp_proto.h"
#include "portrelay/net.h"

/* A string literal and its length, embedded NULs included. */
#define S(lit) (lit), (sizeof(lit) - 1)

#define MAX_CALLS 64
/* The filter's bounds (ftp_filter.c): queue of 16, output pauses at 2 lines. */
#define QUEUE_MAX 16
#define OUT_PAUSE (2 * FTP_LINE_MAX)

/* The canned listeners: WAN side for passive, LAN side for active channels. */
#define PASSIVE_V4 "198.51.100.1"
#define PASSIVE_V6 "2001:db8::1"
#define ACTIVE_V4 "10.0.0.1"
#define ACTIVE_V6 "fd00::1"
#define PASSIVE_PORT 40000   /* 156,64 */
#define ACTIVE_PORT 40001    /* 156,65 */

/* What the relay writes itself (ftp_filter.c). */
#define R_SYNTAX "501 Syntax error in parameters or arguments.\r\n"
#define R_EMPTY "500 Syntax error, command unrecognized.\r\n"
#define R_CTRL "501 Command contains a bare CR or NUL.\r\n"
#define R_FOREIGN "500 Illegal data port: the address is not the client's own.\r\n"
#define R_LOW_PORT "500 Illegal data port: ports below 1024 are refused.\r\n"
#define R_LONG_FORM "502 Command not implemented by the relay; use EPRT or EPSV.\r\n"
#define R_NEED_V1 "522 Network protocol not supported, use (1)\r\n"
#define R_NEED_V2 "522 Network protocol not supported, use (2)\r\n"
#define R_AFTER_ALL "503 Only EPSV may open data connections after EPSV ALL.\r\n"
#define R_EPSV_ALL "200 EPSV ALL command successful.\r\n"
#define R_PASV_V6 "500 PASV cannot name an IPv6 address; use EPSV.\r\n"
#define R_NO_DATA "425 Cannot open data connection.\r\n"
#define R_TOO_LONG "421 Line too long; the relay closes the control connection.\r\n"

#define R_227_V4 "227 Entering Passive Mode (198,51,100,1,156,64).\r\n"
#define R_229 "229 Entering Extended Passive Mode (|||40000|)\r\n"
#define PORT_V4 "PORT 10,0,0,1,156,65\r\n"
#define EPRT_V6 "EPRT |2|fd00::1|40001|\r\n"

struct env {
	struct ftp_filter *f;
	struct ftp_filter_params params;
	struct ftp_filter_hooks hooks;
	struct net_addr passive_listen, active_listen;
	int passive_rc, active_rc;
	unsigned passive_calls, active_calls, refused_calls;
	uint16_t passive_port[MAX_CALLS], active_port[MAX_CALLS];
	enum ftp_verb refused_verb[MAX_CALLS];
	const char *refused_why[MAX_CALLS];
};

static struct net_addr ip(const char *text, uint16_t port)
{
	struct net_addr addr;

	if (net_addr_parse_ip(text, port, &addr) != 0) {
		print_error("\"%s\" is not an address\n", text);
		fail();
	}
	return addr;
}

/* ---- the fake hooks ---------------------------------------------------- */

static int fake_open_passive(void *arg, uint16_t server_port, struct net_addr *listen_out)
{
	struct env *env = arg;

	if (env->passive_calls < MAX_CALLS)
		env->passive_port[env->passive_calls] = server_port;
	env->passive_calls++;
	if (env->passive_rc == 0)
		*listen_out = env->passive_listen;
	return env->passive_rc;
}

static int fake_open_active(void *arg, uint16_t client_port, struct net_addr *listen_out)
{
	struct env *env = arg;

	if (env->active_calls < MAX_CALLS)
		env->active_port[env->active_calls] = client_port;
	env->active_calls++;
	if (env->active_rc == 0)
		*listen_out = env->active_listen;
	return env->active_rc;
}

static void fake_refused(void *arg, enum ftp_verb verb, const char *why)
{
	struct env *env = arg;

	assert_non_null(why);
	if (env->refused_calls < MAX_CALLS) {
		env->refused_verb[env->refused_calls] = verb;
		env->refused_why[env->refused_calls] = why;
	}
	env->refused_calls++;
}

/* ---- set-up --------------------------------------------------------------- */

static struct env *env_new(const char *client_ip, int server_family)
{
	struct env *env = calloc(1, sizeof *env);

	assert_non_null(env);
	env->params.client_addr = ip(client_ip, 50000);
	env->params.server_family = server_family;
	/* The client's listener is on its own family's side (v4-mapped is IPv4). */
	struct net_addr probe = env->params.client_addr;
	net_addr_unmap(&probe);
	env->passive_listen = ip(net_addr_family(&probe) == AF_INET6 ? PASSIVE_V6 : PASSIVE_V4,
				 PASSIVE_PORT);
	env->active_listen = ip(server_family == AF_INET6 ? ACTIVE_V6 : ACTIVE_V4, ACTIVE_PORT);
	env->hooks = (struct ftp_filter_hooks){ .open_passive = fake_open_passive,
						.open_active = fake_open_active,
						.refused = fake_refused,
						.arg = env };
	env->f = ftp_filter_new(&env->params, &env->hooks);
	assert_non_null(env->f);
	return env;
}

static void env_free(struct env *env)
{
	if (env == NULL)
		return;
	ftp_filter_free(env->f);
	free(env);
}

/* Each test keeps its env in *state so that a failed assertion still frees it. */
static struct env *start(void **state, const char *client_ip, int server_family)
{
	struct env *env = env_new(client_ip, server_family);

	*state = env;
	return env;
}

static int teardown(void **state)
{
	env_free(*state);
	return 0;
}

/* ---- feeding and reading ------------------------------------------------ */

static const char *side_name(enum ftp_side side)
{
	return side == FTP_CLIENT ? "client" : "server";
}

/* Printable form of bytes, for messages. */
static void show(const char *label, const char *bytes, size_t len)
{
	print_error("%s (%zu bytes): \"", label, len);
	for (size_t i = 0; i < len && i < 600; i++) {
		unsigned char c = (unsigned char)bytes[i];
		if (c == '\r')
			print_error("\\r");
		else if (c == '\n')
			print_error("\\n");
		else if (c >= 32 && c < 127)
			print_error("%c", c);
		else
			print_error("\\x%02x", c);
	}
	print_error("%s\"\n", len > 600 ? "..." : "");
}

/* Bytes read from `side`, as the owner feeds them: never past room(). */
static void feed_urgent(struct env *env, enum ftp_side side, const char *bytes, size_t len,
			long urgent_at)
{
	size_t room = ftp_filter_room(env->f, side);

	if (room < len) {
		print_error("room for the %s is %zu, feeding %zu\n", side_name(side), room, len);
		fail();
	}
	ftp_filter_feed(env->f, side, bytes, len, urgent_at);
}

static void feed(struct env *env, enum ftp_side side, const char *bytes, size_t len)
{
	feed_urgent(env, side, bytes, len, -1);
}

static void feeds(struct env *env, enum ftp_side side, const char *text)
{
	feed(env, side, text, strlen(text));
}

/* What waits for `side`, then taken as sent. */
static void expect_len(struct env *env, enum ftp_side side, const char *want, size_t want_len)
{
	const char *data;
	size_t urgent_len;
	size_t len = ftp_filter_output(env->f, side, &data, &urgent_len);

	if (len != want_len || (len > 0 && memcmp(data, want, len) != 0)) {
		print_error("output to the %s differs\n", side_name(side));
		show("got", data, len);
		show("want", want, want_len);
		fail();
	}
	assert_true(urgent_len <= len);
	if (len > 0)
		ftp_filter_sent(env->f, side, len);
	assert_int_equal(ftp_filter_output(env->f, side, &data, &urgent_len), 0);
}

static void expect(struct env *env, enum ftp_side side, const char *want)
{
	expect_len(env, side, want, strlen(want));
}

static void expect_nothing(struct env *env)
{
	expect(env, FTP_CLIENT, "");
	expect(env, FTP_SERVER, "");
}

static size_t pending(struct env *env, enum ftp_side side)
{
	const char *data;
	size_t urgent_len;

	return ftp_filter_output(env->f, side, &data, &urgent_len);
}

/* The server's greeting, answered by nothing the client sent. */
static void greet(struct env *env)
{
	feeds(env, FTP_SERVER, "220 Ready\r\n");
	expect(env, FTP_CLIENT, "220 Ready\r\n");
	expect(env, FTP_SERVER, "");
}

/* A command that passes as it is, and the server's answer to it. */
static void round_trip(struct env *env, const char *command, const char *reply)
{
	feeds(env, FTP_CLIENT, command);
	expect(env, FTP_SERVER, command);
	expect(env, FTP_CLIENT, "");
	feeds(env, FTP_SERVER, reply);
	expect(env, FTP_CLIENT, reply);
	expect(env, FTP_SERVER, "");
}

/* A command the relay answers itself at once (nothing is outstanding). */
static void refused(struct env *env, const char *command, const char *reply)
{
	unsigned before = env->refused_calls;

	feeds(env, FTP_CLIENT, command);
	expect(env, FTP_SERVER, "");
	expect(env, FTP_CLIENT, reply);
	if (env->refused_calls != before + 1) {
		print_error("\"%s\": %u refused calls, want %u\n", command, env->refused_calls,
			    before + 1);
		fail();
	}
}

/* ---- whole sessions ------------------------------------------------------ */

static void test_session_ipv4_client_ipv4_server(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	feeds(env, FTP_SERVER, "220 (vsFTPd 3.0.3)\r\n");
	expect(env, FTP_CLIENT, "220 (vsFTPd 3.0.3)\r\n");
	round_trip(env, "USER anonymous\r\n", "331 Please specify the password.\r\n");
	round_trip(env, "PASS guest@\r\n", "230 Login successful.\r\n");
	round_trip(env, "TYPE I\r\n", "200 Switching to Binary mode.\r\n");

	/* PASV: the server's port to the hook, the hook's listener to the client. */
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_227_V4);
	assert_int_equal(env->passive_calls, 1);
	assert_int_equal(env->passive_port[0], 30000);
	round_trip(env, "RETR file.bin\r\n", "150 Opening BINARY mode data connection.\r\n");
	feeds(env, FTP_SERVER, "226 Transfer complete.\r\n");
	expect(env, FTP_CLIENT, "226 Transfer complete.\r\n");

	/* EPSV to an IPv4 server goes as PASV; the client gets its 229. */
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,49).\r\n");
	expect(env, FTP_CLIENT, R_229);
	assert_int_equal(env->passive_calls, 2);
	assert_int_equal(env->passive_port[1], 30001);

	/* PORT: checked, then the server gets the relay's listener. */
	feeds(env, FTP_CLIENT, "PORT 203,0,113,5,19,137\r\n");
	expect(env, FTP_SERVER, PORT_V4);
	expect(env, FTP_CLIENT, "");
	assert_int_equal(env->active_calls, 1);
	assert_int_equal(env->active_port[0], 5001);
	feeds(env, FTP_SERVER, "200 PORT command successful. Consider using PASV.\r\n");
	expect(env, FTP_CLIENT, "200 PORT command successful. Consider using PASV.\r\n");

	/* EPRT from an IPv4 client to an IPv4 server goes as PORT. */
	feeds(env, FTP_CLIENT, "EPRT |1|203.0.113.5|5002|\r\n");
	expect(env, FTP_SERVER, PORT_V4);
	assert_int_equal(env->active_calls, 2);
	assert_int_equal(env->active_port[1], 5002);
	feeds(env, FTP_SERVER, "200 PORT command successful.\r\n");
	expect(env, FTP_CLIENT, "200 PORT command successful.\r\n");

	round_trip(env, "QUIT\r\n", "221 Goodbye.\r\n");
	ftp_filter_free(NULL);
	assert_int_equal(env->refused_calls, 0);
	assert_int_equal(ftp_filter_refused_count(env->f), 0);
	assert_null(ftp_filter_failure(env->f));
	assert_false(ftp_filter_is_opaque(env->f));
}

static void test_session_ipv6_client_ipv4_server(void **state)
{
	struct env *env = start(state, "2001:db8::5", AF_INET);

	greet(env);
	/* EPSV reaches the IPv4 server as PASV; the 227 becomes a 229. */
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_229);
	assert_int_equal(env->passive_port[0], 30000);
	/* "EPSV 2" is the client's own family; "EPSV 1" is not. */
	feeds(env, FTP_CLIENT, "EPSV 2\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,49).\r\n");
	expect(env, FTP_CLIENT, R_229);
	refused(env, "EPSV 1\r\n", R_NEED_V2);

	/* PASV cannot answer with an IPv6 address. */
	refused(env, "PASV\r\n", R_PASV_V6);
	assert_int_equal(env->refused_verb[1], FTP_VERB_PASV);

	/* EPRT |2| with its own address goes to the IPv4 server as PORT. */
	feeds(env, FTP_CLIENT, "EPRT |2|2001:db8::5|5001|\r\n");
	expect(env, FTP_SERVER, PORT_V4);
	assert_int_equal(env->active_port[0], 5001);
	feeds(env, FTP_SERVER, "200 PORT command successful.\r\n");
	expect(env, FTP_CLIENT, "200 PORT command successful.\r\n");
	/* The other family is refused: EPRT |1| with 522, PORT with 501. */
	refused(env, "EPRT |1|203.0.113.5|5001|\r\n", R_NEED_V2);
	refused(env, "PORT 203,0,113,5,19,137\r\n", R_SYNTAX);
	/* Another IPv6 host: bounce. */
	refused(env, "EPRT |2|2001:db8::6|5001|\r\n", R_FOREIGN);
	assert_int_equal(env->active_calls, 1);
	assert_int_equal(ftp_filter_refused_count(env->f), 5);
}

static void test_session_ipv4_client_ipv6_server(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET6);

	greet(env);
	/* PASV reaches the IPv6 server as EPSV; its 229 becomes a 227. */
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "EPSV\r\n");
	feeds(env, FTP_SERVER, "229 Entering Extended Passive Mode (|||30000|)\r\n");
	expect(env, FTP_CLIENT, R_227_V4);
	assert_int_equal(env->passive_port[0], 30000);
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "EPSV\r\n");
	feeds(env, FTP_SERVER, "229 Entering Extended Passive Mode (|||30001|)\r\n");
	expect(env, FTP_CLIENT, R_229);
	assert_int_equal(env->passive_port[1], 30001);
	refused(env, "EPSV 2\r\n", R_NEED_V1);

	/* PORT and EPRT |1| reach the IPv6 server as EPRT |2| naming the relay. */
	feeds(env, FTP_CLIENT, "PORT 203,0,113,5,19,137\r\n");
	expect(env, FTP_SERVER, EPRT_V6);
	feeds(env, FTP_SERVER, "200 EPRT command successful.\r\n");
	expect(env, FTP_CLIENT, "200 EPRT command successful.\r\n");
	feeds(env, FTP_CLIENT, "EPRT |1|203.0.113.5|5002|\r\n");
	expect(env, FTP_SERVER, EPRT_V6);
	feeds(env, FTP_SERVER, "200 EPRT command successful.\r\n");
	expect(env, FTP_CLIENT, "200 EPRT command successful.\r\n");
	assert_int_equal(env->active_calls, 2);
	assert_int_equal(env->active_port[0], 5001);
	assert_int_equal(env->active_port[1], 5002);
	refused(env, "EPRT |2|2001:db8::5|5002|\r\n", R_NEED_V1);
}

static void test_session_ipv6_client_ipv6_server(void **state)
{
	struct env *env = start(state, "2001:db8::5", AF_INET6);

	greet(env);
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "EPSV\r\n");
	feeds(env, FTP_SERVER, "229 Entering Extended Passive Mode (|||30000|)\r\n");
	expect(env, FTP_CLIENT, R_229);
	feeds(env, FTP_CLIENT, "EPRT |2|2001:db8::5|5001|\r\n");
	expect(env, FTP_SERVER, EPRT_V6);
	feeds(env, FTP_SERVER, "200 EPRT command successful.\r\n");
	expect(env, FTP_CLIENT, "200 EPRT command successful.\r\n");
	/* A server that answers EPSV with a 227: its port is all that is used. */
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "EPSV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,49)\r\n");
	expect(env, FTP_CLIENT, R_229);
	assert_int_equal(env->passive_port[1], 30001);
}

/* A client seen on a dual-stack socket as ::ffff:a.b.c.d is an IPv4 client. */
static void test_v4_mapped_client_is_ipv4(void **state)
{
	struct env *env = start(state, "::ffff:203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_227_V4);
	feeds(env, FTP_CLIENT, "PORT 203,0,113,5,19,137\r\n");
	expect(env, FTP_SERVER, PORT_V4);
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n");
	/* Its EPRT may name itself v4-mapped too. */
	feeds(env, FTP_CLIENT, "EPRT |2|::ffff:203.0.113.5|5002|\r\n");
	expect(env, FTP_SERVER, PORT_V4);
	assert_int_equal(env->active_port[1], 5002);
	assert_int_equal(env->refused_calls, 0);
}

/* ---- refusals ------------------------------------------------------------- */

static void test_bounce_refused_never_passed(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	/* Another host, or a port below 1024 on the client itself. */
	refused(env, "PORT 10,0,0,99,0,22\r\n", R_FOREIGN);
	refused(env, "PORT 10,0,0,99,19,137\r\n", R_FOREIGN);
	refused(env, "PORT 203,0,113,6,19,137\r\n", R_FOREIGN);
	refused(env, "PORT 0,0,0,0,19,137\r\n", R_FOREIGN);
	refused(env, "PORT 127,0,0,1,19,137\r\n", R_FOREIGN);
	refused(env, "port 10,0,0,99,19,137\r\n", R_FOREIGN);
	refused(env, "EPRT |1|10.0.0.99|5001|\r\n", R_FOREIGN);
	refused(env, "EPRT !1!10.0.0.99!5001!\r\n", R_FOREIGN);
	refused(env, "PORT 203,0,113,5,0,21\r\n", R_LOW_PORT);
	refused(env, "PORT 203,0,113,5,3,255\r\n", R_LOW_PORT);   /* 1023 */
	refused(env, "EPRT |1|203.0.113.5|25|\r\n", R_LOW_PORT);
	refused(env, "EPRT |1|203.0.113.5|1023|\r\n", R_LOW_PORT);
	/* After Telnet commands, as ABOR comes: still seen. */
	refused(env, "\xff\xf4\xff\xf2PORT 10,0,0,99,19,137\r\n", R_FOREIGN);
	/* After blanks, with a tab, Telnet inside the verb: refused as malformed. */
	refused(env, " PORT 10,0,0,99,19,137\r\n", R_SYNTAX);
	refused(env, "\tEPRT |1|10.0.0.99|5001|\r\n", R_SYNTAX);
	refused(env, "PORT\t10,0,0,99,19,137\r\n", R_SYNTAX);
	refused(env, "P\xff\xf4ORT 10,0,0,99,19,137\r\n", R_SYNTAX);
	refused(env, "EP\xff\xf2RT |1|10.0.0.99|5001|\r\n", R_SYNTAX);
	refused(env, "PORT\xff\xf4 10,0,0,99,19,137\r\n", R_SYNTAX);
	assert_int_equal(env->active_calls, 0);
	for (unsigned i = 0; i < env->refused_calls; i++) {
		if (env->refused_verb[i] != FTP_VERB_PORT && env->refused_verb[i] != FTP_VERB_EPRT) {
			print_error("refusal %u: verb %d\n", i, env->refused_verb[i]);
			fail();
		}
	}
	assert_int_equal(ftp_filter_refused_count(env->f), env->refused_calls);

	/* 1024 is the first port allowed. */
	feeds(env, FTP_CLIENT, "PORT 203,0,113,5,4,0\r\n");
	expect(env, FTP_SERVER, PORT_V4);
	assert_int_equal(env->active_port[0], 1024);

	/* A line that does not begin with PORT is not PORT: it passes. */
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n");
	round_trip(env, "SITE PORT 10,0,0,99,19,137\r\n", "500 Unknown SITE command.\r\n");
	round_trip(env, "PORTX 10,0,0,99,19,137\r\n", "500 Unknown command.\r\n");
}

static void test_malformed_and_long_forms_refused(void **state)
{
	static const char *const malformed[] = {
		"PORT 256,0,113,5,19,137\r\n",    "PORT 203,0,113,5,19,1000\r\n",
		"PORT -203,0,113,5,19,137\r\n",   "PORT 203,,113,5,19,137\r\n",
		"PORT 203,0,113,5,19,137,1\r\n",  "PORT 203,0,113,5,19\r\n",
		"PORT 203, 0,113,5,19,137\r\n",   "PORT +203,0,113,5,19,137\r\n",
		"PORT 203,0,113,5,0,0\r\n",       "PORT  203,0,113,5,19,137\r\n",
		"PORT 203,0,113,5,19,137 \r\n",   "PORT\r\n",
		"PORT \r\n",                      "PORT 99999999999999999999,0,113,5,19,137\r\n",
		"EPRT |1|203.0.113.5|0|\r\n",     "EPRT |1|203.0.113.5|65536|\r\n",
		"EPRT |1|203.0.113.5|5001|x\r\n", "EPRT |3|203.0.113.5|5001|\r\n",
		"EPRT |2|203.0.113.5|5001|\r\n",  "EPRT\r\n",
		"EPSV x\r\n",                     "EPSV ALLX\r\n",
		"EPSV  1\r\n",                    "PASV1\r\n",
	};
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++)
		refused(env, malformed[i], R_SYNTAX);
	refused(env, "LPRT 4,4,203,0,113,5,2,19,137\r\n", R_LONG_FORM);
	assert_int_equal(env->refused_verb[env->refused_calls - 1], FTP_VERB_LPRT);
	refused(env, "LPSV\r\n", R_LONG_FORM);
	assert_int_equal(env->refused_verb[env->refused_calls - 1], FTP_VERB_LPSV);
	refused(env, "lpsv\r\n", R_LONG_FORM);
	assert_int_equal(env->active_calls, 0);
	assert_int_equal(env->passive_calls, 0);
	assert_int_equal(ftp_filter_refused_count(env->f),
			 sizeof malformed / sizeof malformed[0] + 3);
}

/* The owner cannot open a listener: the client hears 425, the server nothing. */
static void test_listener_failures_answer_425(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	env->active_rc = -1;
	refused(env, "PORT 203,0,113,5,19,137\r\n", R_NO_DATA);
	assert_int_equal(env->active_calls, 1);

	env->passive_rc = -1;
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_NO_DATA);
	assert_int_equal(env->passive_calls, 1);
	assert_int_equal(env->refused_calls, 2);
	assert_int_equal(env->refused_verb[1], FTP_VERB_PASV);
	assert_string_equal(env->refused_why[1], "no data listener");

	/* A listener of the wrong family for a 227: 425 as well. */
	env->passive_rc = 0;
	env->passive_listen = ip("2001:db8::1", PASSIVE_PORT);
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_NO_DATA);
	assert_int_equal(ftp_filter_refused_count(env->f), 3);
}

/* A passive reply the relay cannot read: 425, and no listener asked for. */
static void test_unreadable_passive_reply_answers_425(void **state)
{
	static const char *const replies[] = {
		"227 Entering Passive Mode.\r\n",
		"227 Entering Passive Mode (10,0,0,9,0,0).\r\n",
		"227 Entering Passive Mode (10,0,0,9,117,48,1).\r\n",
		"229 Entering Extended Passive Mode (|||0|)\r\n",
		"229 Entering Extended Passive Mode (|||65536|)\r\n",
		"229 Entering Extended Passive Mode |||6446|\r\n",
	};
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
		feeds(env, FTP_CLIENT, "PASV\r\n");
		expect(env, FTP_SERVER, "PASV\r\n");
		feeds(env, FTP_SERVER, replies[i]);
		expect(env, FTP_CLIENT, R_NO_DATA);
		assert_string_equal(env->refused_why[i], "unreadable passive reply from the server");
	}
	assert_int_equal(env->passive_calls, 0);
	assert_int_equal(ftp_filter_refused_count(env->f), sizeof replies / sizeof replies[0]);
	/* Any other answer to PASV (an error) passes as it is. */
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "425 Cannot open passive connection.\r\n");
	expect(env, FTP_CLIENT, "425 Cannot open passive connection.\r\n");
}

static void test_bare_cr_and_nul_refused(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	unsigned before;

	greet(env);
	refused(env, "USER a\rb\r\n", R_CTRL);
	refused(env, "NOOP\r\r\n", R_CTRL);
	refused(env, "\rPORT 203,0,113,5,19,137\r\n", R_CTRL);
	refused(env, "RETR a\rPORT 10,0,0,99,19,137\n", R_CTRL);
	before = env->refused_calls;
	feed(env, FTP_CLIENT, S("USER a\0b\r\n"));
	expect(env, FTP_SERVER, "");
	expect(env, FTP_CLIENT, R_CTRL);
	feed(env, FTP_CLIENT, S("PORT 203,0,113,5,19,137\0\r\n"));
	expect(env, FTP_SERVER, "");
	expect(env, FTP_CLIENT, R_CTRL);
	assert_int_equal(env->refused_calls, before + 2);
	assert_int_equal(env->refused_verb[env->refused_calls - 1], FTP_VERB_PORT);
	assert_int_equal(env->active_calls, 0);
	/* CR LF and a lone LF end lines; both pass as they came. */
	round_trip(env, "NOOP\n", "200 NOOP ok.\n");
	round_trip(env, "NOOP\r\n", "200 NOOP ok.\r\n");
	assert_int_equal(ftp_filter_refused_count(env->f), 6);
}

/* Servers disagree on empty lines; the relay answers them itself, counted. */
static void test_empty_lines_answered_by_the_relay(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	refused(env, "\r\n", R_EMPTY);
	refused(env, "\n", R_EMPTY);
	refused(env, "   \r\n", R_EMPTY);
	refused(env, "\t\r\n", R_EMPTY);
	refused(env, "\xff\xf4\xff\xf2\r\n", R_EMPTY);
	assert_int_equal(ftp_filter_refused_count(env->f), 5);
	/* In its turn behind a command the server has not answered yet. */
	feeds(env, FTP_CLIENT, "NOOP\r\n\r\n");
	expect(env, FTP_SERVER, "NOOP\r\n");
	expect(env, FTP_CLIENT, "");
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n" R_EMPTY);
}

static void test_epsv_all(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	/* Answered by the relay, in its turn, and the server never hears of it. */
	feeds(env, FTP_CLIENT, "NOOP\r\nepsv all\r\n");
	expect(env, FTP_SERVER, "NOOP\r\n");
	expect(env, FTP_CLIENT, "");
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n" R_EPSV_ALL);
	assert_int_equal(ftp_filter_refused_count(env->f), 0);

	/* The promise is kept: only EPSV opens data channels now. */
	refused(env, "PASV\r\n", R_AFTER_ALL);
	refused(env, "PORT 203,0,113,5,19,137\r\n", R_AFTER_ALL);
	refused(env, "EPRT |1|203.0.113.5|5001|\r\n", R_AFTER_ALL);
	refused(env, "PORT 1,2,3\r\n", R_AFTER_ALL);
	assert_int_equal(env->active_calls, 0);
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_229);
	feeds(env, FTP_CLIENT, "EPSV ALL\r\n");
	expect(env, FTP_CLIENT, R_EPSV_ALL);
	expect(env, FTP_SERVER, "");
	assert_int_equal(ftp_filter_refused_count(env->f), 4);
}

/* ---- order: the relay's answers in their turn among the server's ------------ */

static void test_pipelined_refusals_keep_their_turn(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT,
	      "USER a\r\nLPSV\r\nPASS b\r\nPORT 10,0,0,99,19,137\r\nNOOP\r\n\r\nSYST\r\n");
	expect(env, FTP_SERVER, "USER a\r\nPASS b\r\nNOOP\r\nSYST\r\n");
	expect(env, FTP_CLIENT, "");
	feeds(env, FTP_SERVER, "331 Password please\r\n");
	expect(env, FTP_CLIENT, "331 Password please\r\n" R_LONG_FORM);
	feeds(env, FTP_SERVER, "230 Logged in\r\n");
	expect(env, FTP_CLIENT, "230 Logged in\r\n" R_FOREIGN);
	feeds(env, FTP_SERVER, "200 NOOP ok\r\n215 UNIX Type: L8\r\n");
	expect(env, FTP_CLIENT, "200 NOOP ok\r\n" R_EMPTY "215 UNIX Type: L8\r\n");
	/* Nothing outstanding: a refusal goes out at once. */
	refused(env, "LPSV\r\n", R_LONG_FORM);
}

/* Commands sent before the greeting: their answers come after it. */
static void test_refusal_waits_for_the_greeting(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	feeds(env, FTP_CLIENT, "LPSV\r\nUSER a\r\nLPRT\r\n");
	expect(env, FTP_SERVER, "USER a\r\n");
	expect(env, FTP_CLIENT, "");
	feeds(env, FTP_SERVER, "220-Hello\r\n220 Ready\r\n");
	expect(env, FTP_CLIENT, "220-Hello\r\n220 Ready\r\n" R_LONG_FORM);
	feeds(env, FTP_SERVER, "331 Password please\r\n");
	expect(env, FTP_CLIENT, "331 Password please\r\n" R_LONG_FORM);
}

/* ---- split and pipelined: the same bytes however they arrive ---------------- */

struct step {
	enum ftp_side side;
	const char *bytes;
	size_t len;
};

static const struct step session_steps[] = {
	{ FTP_SERVER, S("220-Welcome\r\n220 Ready\r\n") },
	{ FTP_CLIENT, S("USER anonymous\r\nPASS x@y\r\n") },
	{ FTP_SERVER, S("331 Password please\r\n230 Logged in\r\n") },
	{ FTP_CLIENT, S("\xff\xf4\xff\xf2" "ABOR\r\nPASV\r\nLPSV\r\nEPSV\r\n"
			"PORT 203,0,113,5,19,137\r\nPORT 10,0,0,99,19,137\r\n"
			"EPRT |1|203.0.113.5|5002|\r\nTYPE I\r\n") },
	{ FTP_SERVER, S("225 ABOR ok\r\n227 Entering Passive Mode (10,0,0,9,117,48).\r\n"
			"227-Entering\r\n227-Passive\r\n227 Entering Passive Mode (10,0,0,9,117,49)\r\n"
			"200 PORT ok\r\n200 EPRT ok\r\n"
			"211-Status\r\n227 Entering Passive Mode (10,0,0,9,1,1)\r\n211 End\r\n") },
	{ FTP_CLIENT, S("\r\nNOOP\nQUIT\r\n") },
	{ FTP_SERVER, S("200 NOOP ok\r\n221 Bye\r\n") },
};

static const char session_to_client[] =
	"220-Welcome\r\n220 Ready\r\n"
	"331 Password please\r\n230 Logged in\r\n"
	"225 ABOR ok\r\n" R_227_V4 R_LONG_FORM R_229 "200 PORT ok\r\n" R_FOREIGN "200 EPRT ok\r\n"
	"211-Status\r\n227 Entering Passive Mode (10,0,0,9,1,1)\r\n211 End\r\n"
	R_EMPTY "200 NOOP ok\r\n221 Bye\r\n";

static const char session_to_server[] =
	"USER anonymous\r\nPASS x@y\r\n"
	"\xff\xf4\xff\xf2" "ABOR\r\nPASV\r\nPASV\r\n" PORT_V4 PORT_V4 "TYPE I\r\n"
	"NOOP\nQUIT\r\n";

struct transcript {
	char bytes[2][4096];
	size_t len[2];
	unsigned passive_calls, active_calls, refused;
	uint16_t ports[8];
};

static void drain(struct env *env, struct transcript *t)
{
	for (int side = 0; side < 2; side++) {
		const char *data;
		size_t urgent_len;
		size_t len = ftp_filter_output(env->f, (enum ftp_side)side, &data, &urgent_len);
		assert_true(t->len[side] + len <= sizeof t->bytes[side]);
		assert_int_equal(urgent_len, 0);
		if (len > 0) {
			memcpy(t->bytes[side] + t->len[side], data, len);
			t->len[side] += len;
			ftp_filter_sent(env->f, (enum ftp_side)side, len);
		}
	}
}

/*
 * Plays session_steps: step `split_step` is fed in two parts cut at
 * `split_at` (0: whole), or, with byte_by_byte, every step one byte at a time.
 */
static void play(struct transcript *t, size_t split_step, size_t split_at, bool byte_by_byte)
{
	struct env *env = env_new("203.0.113.5", AF_INET);

	memset(t, 0, sizeof *t);
	for (size_t i = 0; i < sizeof session_steps / sizeof session_steps[0]; i++) {
		const struct step *s = &session_steps[i];
		if (byte_by_byte) {
			for (size_t b = 0; b < s->len; b++) {
				feed(env, s->side, s->bytes + b, 1);
				drain(env, t);
			}
		} else if (i == split_step && split_at > 0) {
			feed(env, s->side, s->bytes, split_at);
			drain(env, t);
			feed(env, s->side, s->bytes + split_at, s->len - split_at);
		} else {
			feed(env, s->side, s->bytes, s->len);
		}
		drain(env, t);
	}
	t->passive_calls = env->passive_calls;
	t->active_calls = env->active_calls;
	t->refused = (unsigned)ftp_filter_refused_count(env->f);
	for (unsigned i = 0; i < 4 && i < env->passive_calls; i++)
		t->ports[i] = env->passive_port[i];
	for (unsigned i = 0; i < 4 && i < env->active_calls; i++)
		t->ports[4 + i] = env->active_port[i];
	assert_null(ftp_filter_failure(env->f));
	env_free(env);
}

static void assert_same_transcript(const struct transcript *got, const struct transcript *want,
				   const char *how)
{
	for (int side = 0; side < 2; side++) {
		if (got->len[side] != want->len[side] ||
		    memcmp(got->bytes[side], want->bytes[side], want->len[side]) != 0) {
			print_error("%s: the %s got other bytes\n", how, side_name((enum ftp_side)side));
			show("got", got->bytes[side], got->len[side]);
			show("want", want->bytes[side], want->len[side]);
			fail();
		}
	}
	assert_int_equal(got->passive_calls, want->passive_calls);
	assert_int_equal(got->active_calls, want->active_calls);
	assert_int_equal(got->refused, want->refused);
	assert_memory_equal(got->ports, want->ports, sizeof got->ports);
}

static void test_split_at_every_byte_gives_the_same_bytes(void **state)
{
	struct transcript *whole = calloc(1, sizeof *whole), *t = calloc(1, sizeof *t);
	char how[64];

	(void)state;
	assert_non_null(whole);
	assert_non_null(t);
	play(whole, 0, 0, false);
	/* The reference itself is what the session must give. */
	assert_int_equal(whole->len[FTP_CLIENT], strlen(session_to_client));
	assert_memory_equal(whole->bytes[FTP_CLIENT], session_to_client, strlen(session_to_client));
	assert_int_equal(whole->len[FTP_SERVER], sizeof session_to_server - 1);
	assert_memory_equal(whole->bytes[FTP_SERVER], session_to_server,
			    sizeof session_to_server - 1);
	assert_int_equal(whole->passive_calls, 2);
	assert_int_equal(whole->ports[0], 30000);
	assert_int_equal(whole->ports[1], 30001);
	assert_int_equal(whole->active_calls, 2);
	assert_int_equal(whole->ports[4], 5001);
	assert_int_equal(whole->ports[5], 5002);
	assert_int_equal(whole->refused, 3);

	play(t, 0, 0, true);
	assert_same_transcript(t, whole, "one byte at a time");
	for (size_t i = 0; i < sizeof session_steps / sizeof session_steps[0]; i++) {
		for (size_t at = 1; at < session_steps[i].len; at++) {
			play(t, i, at, false);
			snprintf(how, sizeof how, "step %zu cut at %zu", i, at);
			assert_same_transcript(t, whole, how);
		}
	}
	free(whole);
	free(t);
}

/* ---- multi-line replies ------------------------------------------------------ */

static void test_multiline_replies_pass_whole(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	feeds(env, FTP_SERVER, "220-Welcome to\r\n220-the server\r\n220 Ready\r\n");
	expect(env, FTP_CLIENT, "220-Welcome to\r\n220-the server\r\n220 Ready\r\n");
	/* RFC 2389 FEAT: text lines start with a space; a line that looks like
	 * another reply ends nothing. */
	feeds(env, FTP_CLIENT, "FEAT\r\nLPSV\r\n");
	expect(env, FTP_SERVER, "FEAT\r\n");
	feeds(env, FTP_SERVER, "211-Features:\r\n EPRT\r\n EPSV\r\n");
	expect(env, FTP_CLIENT, "211-Features:\r\n EPRT\r\n EPSV\r\n");
	feeds(env, FTP_SERVER, "200 not the end\r\n211-still not\r\n211");
	expect(env, FTP_CLIENT, "200 not the end\r\n211-still not\r\n");
	feeds(env, FTP_SERVER, " End\r\n");
	/* Only now is FEAT answered, and the relay's 502 follows. */
	expect(env, FTP_CLIENT, "211 End\r\n" R_LONG_FORM);
	/* "ddd" alone ends a multi-line reply too. */
	feeds(env, FTP_CLIENT, "HELP\r\n");
	expect(env, FTP_SERVER, "HELP\r\n");
	feeds(env, FTP_SERVER, "214-Help\r\n  PORT PASV\r\n214\r\n");
	expect(env, FTP_CLIENT, "214-Help\r\n  PORT PASV\r\n214\r\n");
	refused(env, "LPSV\r\n", R_LONG_FORM);
}

/* A multi-line 227 to the client's PASV: the relay's one line replaces it all. */
static void test_multiline_227_rewritten(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT, "PASV\r\nLPSV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "227-Entering Passive Mode\r\n227-(10,0,0,9,1,1) is not it\r\n");
	expect(env, FTP_CLIENT, "");
	assert_int_equal(env->passive_calls, 0);
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48)\r\n");
	expect(env, FTP_CLIENT, R_227_V4 R_LONG_FORM);
	assert_int_equal(env->passive_calls, 1);
	assert_int_equal(env->passive_port[0], 30000);
	/* The same as a 229 to EPSV. */
	feeds(env, FTP_CLIENT, "EPSV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "229-Extended\r\n229 Entering Extended Passive Mode (|||30001|)\r\n");
	expect(env, FTP_CLIENT, R_229);
	assert_int_equal(env->passive_port[1], 30001);
}

/* "227 ..." as a text line of another reply is text: not rewritten, no listener. */
static void test_227_inside_another_reply_is_text(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	/* Even while a PASV waits behind the STAT. */
	feeds(env, FTP_CLIENT, "STAT\r\nPASV\r\n");
	expect(env, FTP_SERVER, "STAT\r\nPASV\r\n");
	feeds(env, FTP_SERVER,
	      "211-Status of server:\r\n227 Entering Passive Mode (10,0,0,9,1,1)\r\n"
	      "229 Entering Extended Passive Mode (|||257|)\r\n211 End of status\r\n");
	expect(env, FTP_CLIENT,
	       "211-Status of server:\r\n227 Entering Passive Mode (10,0,0,9,1,1)\r\n"
	       "229 Entering Extended Passive Mode (|||257|)\r\n211 End of status\r\n");
	assert_int_equal(env->passive_calls, 0);
	/* The PASV's own 227 is the next reply. */
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_227_V4);
	assert_int_equal(env->passive_calls, 1);
	assert_int_equal(env->passive_port[0], 30000);
}

/* A 227 or 229 nobody asked for passes untouched and opens nothing. */
static void test_unsolicited_227_changes_nothing(void **state)
{
	static const char r227[] = "227 Entering Passive Mode (10,0,0,9,117,48).\r\n";
	static const char r229[] = "229 Entering Extended Passive Mode (|||30000|)\r\n";
	struct env *env = start(state, "203.0.113.5", AF_INET);

	/* As the greeting. */
	feeds(env, FTP_SERVER, r227);
	expect(env, FTP_CLIENT, r227);
	/* With nothing outstanding. */
	feeds(env, FTP_SERVER, r227);
	expect(env, FTP_CLIENT, r227);
	feeds(env, FTP_SERVER, r229);
	expect(env, FTP_CLIENT, r229);
	/* As the answer to another command. */
	feeds(env, FTP_CLIENT, "NOOP\r\n");
	expect(env, FTP_SERVER, "NOOP\r\n");
	feeds(env, FTP_SERVER, r227);
	expect(env, FTP_CLIENT, r227);
	assert_int_equal(env->passive_calls, 0);
	/* Then a real PASV is still rewritten. */
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, r227);
	expect(env, FTP_CLIENT, R_227_V4);
	/* ... only once: the next 227 is nobody's. */
	feeds(env, FTP_SERVER, r227);
	expect(env, FTP_CLIENT, r227);
	assert_int_equal(env->passive_calls, 1);
	assert_int_equal(env->refused_calls, 0);
}

/* A preliminary 1xx answers nothing: the PASV still waits for its 227. */
static void test_preliminary_reply_keeps_the_command_outstanding(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "150 Wait\r\n150-More\r\n150 waiting\r\n");
	expect(env, FTP_CLIENT, "150 Wait\r\n150-More\r\n150 waiting\r\n");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, R_227_V4);
	/* Server garbage that is no reply at all passes as it is and answers nothing. */
	feeds(env, FTP_CLIENT, "PASV\r\n");
	expect(env, FTP_SERVER, "PASV\r\n");
	feeds(env, FTP_SERVER, "hello\r\n");
	expect(env, FTP_CLIENT, "hello\r\n");
	feeds(env, FTP_SERVER, "227 =10,0,0,9,117,49\r\n");
	expect(env, FTP_CLIENT, R_227_V4);
	assert_int_equal(env->passive_port[1], 30001);
}

/* ---- AUTH TLS ------------------------------------------------------------------ */

static void test_auth_tls_makes_the_channel_opaque(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	/* The client is not read until the server answers the AUTH. */
	feeds(env, FTP_CLIENT, "AUTH TLS\r\nPORT 10,0,0,99,19,137\r\n");
	expect(env, FTP_SERVER, "AUTH TLS\r\n");
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	assert_true(ftp_filter_room(env->f, FTP_SERVER) > 0);
	assert_false(ftp_filter_is_opaque(env->f));
	feeds(env, FTP_SERVER, "234 Proceed with negotiation.\r\n");
	expect(env, FTP_CLIENT, "234 Proceed with negotiation.\r\n");
	assert_true(ftp_filter_is_opaque(env->f));
	/* What followed the AUTH is TLS now: it passes untouched. */
	expect(env, FTP_SERVER, "PORT 10,0,0,99,19,137\r\n");
	assert_true(ftp_filter_room(env->f, FTP_CLIENT) > 0);
	feed(env, FTP_CLIENT, S("\x16\x03\x01\x02\x00\x01\r\x00\nPORT 1,2,3,4,5,6\r\n\r\n"));
	expect_len(env, FTP_SERVER, S("\x16\x03\x01\x02\x00\x01\r\x00\nPORT 1,2,3,4,5,6\r\n\r\n"));
	expect(env, FTP_CLIENT, "");
	feeds(env, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	expect(env, FTP_CLIENT, "227 Entering Passive Mode (10,0,0,9,117,48).\r\n");
	/* Binary without any line end, longer than a line: no limit any more. */
	char blob[FTP_LINE_MAX];
	memset(blob, 'T', sizeof blob);
	feed(env, FTP_SERVER, blob, sizeof blob);
	expect_len(env, FTP_CLIENT, blob, sizeof blob);
	feed(env, FTP_CLIENT, blob, sizeof blob);
	expect_len(env, FTP_SERVER, blob, sizeof blob);
	assert_null(ftp_filter_failure(env->f));
	assert_int_equal(env->passive_calls + env->active_calls + env->refused_calls, 0);
}

static void test_auth_refused_keeps_filtering(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT, "auth ssl\r\n");
	expect(env, FTP_SERVER, "auth ssl\r\n");
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	feeds(env, FTP_SERVER, "504 Unknown AUTH type.\r\n");
	expect(env, FTP_CLIENT, "504 Unknown AUTH type.\r\n");
	assert_false(ftp_filter_is_opaque(env->f));
	assert_true(ftp_filter_room(env->f, FTP_CLIENT) > 0);
	refused(env, "PORT 10,0,0,99,19,137\r\n", R_FOREIGN);

	/* A 234 that answers another command opens nothing. */
	feeds(env, FTP_CLIENT, "NOOP\r\nAUTH TLS\r\n");
	expect(env, FTP_SERVER, "NOOP\r\nAUTH TLS\r\n");
	feeds(env, FTP_SERVER, "234 odd\r\n");
	expect(env, FTP_CLIENT, "234 odd\r\n");
	assert_false(ftp_filter_is_opaque(env->f));
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	/* A multi-line 234 to the AUTH does. */
	feeds(env, FTP_SERVER, "234-Go\r\n234 ahead\r\n");
	expect(env, FTP_CLIENT, "234-Go\r\n234 ahead\r\n");
	assert_true(ftp_filter_is_opaque(env->f));
	feeds(env, FTP_CLIENT, "PORT 10,0,0,99,19,137\r\n");
	expect(env, FTP_SERVER, "PORT 10,0,0,99,19,137\r\n");
}

/* AUTH hidden behind Telnet commands inside its verb is refused, not passed. */
static void test_auth_with_telnet_inside_refused(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	refused(env, "AU\xff\xf4TH TLS\r\n", R_SYNTAX);
	assert_int_equal(env->refused_verb[0], FTP_VERB_AUTH);
	assert_true(ftp_filter_room(env->f, FTP_CLIENT) > 0);
}

/* ---- bounds ------------------------------------------------------------------------ */

static void assert_failed_with_421(struct env *env, const char *before_421, const char *why)
{
	char want[256];

	assert_non_null(ftp_filter_failure(env->f));
	assert_string_equal(ftp_filter_failure(env->f), why);
	snprintf(want, sizeof want, "%s%s", before_421, R_TOO_LONG);
	expect(env, FTP_CLIENT, want);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	assert_int_equal(ftp_filter_room(env->f, FTP_SERVER), 0);
}

static void test_long_command_ends_the_session(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char *line = malloc(FTP_LINE_MAX + 2);

	assert_non_null(line);
	greet(env);
	/* FTP_LINE_MAX bytes with the line end: passes. */
	memcpy(line, "RETR ", 5);
	memset(line + 5, 'a', FTP_LINE_MAX - 5);
	memcpy(line + FTP_LINE_MAX - 2, "\r\n", 2);
	feed(env, FTP_CLIENT, line, FTP_LINE_MAX);
	expect_len(env, FTP_SERVER, line, FTP_LINE_MAX);
	feeds(env, FTP_SERVER, "550 No such file.\r\n");
	expect(env, FTP_CLIENT, "550 No such file.\r\n");
	/* One more byte: the line never ends within bounds. */
	memset(line + 5, 'a', FTP_LINE_MAX - 5);
	feed(env, FTP_CLIENT, line, FTP_LINE_MAX);
	assert_failed_with_421(env, "", "command line too long");
	expect(env, FTP_SERVER, "");
	/* Nothing more is taken from either side. */
	ftp_filter_feed(env->f, FTP_CLIENT, "\r\nPORT 10,0,0,99,19,137\r\n", 25, -1);
	ftp_filter_feed(env->f, FTP_SERVER, "200 ok\r\n", 8, -1);
	expect_nothing(env);
	free(line);
}

static void test_long_reply_ends_the_session(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char *line = malloc(FTP_LINE_MAX);

	assert_non_null(line);
	greet(env);
	feeds(env, FTP_CLIENT, "NOOP\r\nLPSV\r\n");
	expect(env, FTP_SERVER, "NOOP\r\n");
	/* The client's output holds a reply it has not taken yet; the 421 follows it. */
	feeds(env, FTP_SERVER, "200 ok\r\n");
	memcpy(line, "257 \"", 5);
	memset(line + 5, 'p', FTP_LINE_MAX - 5);
	feed(env, FTP_SERVER, line, FTP_LINE_MAX);
	assert_failed_with_421(env, "200 ok\r\n" R_LONG_FORM, "reply line too long");
	expect(env, FTP_SERVER, "");
	free(line);
}

/*
 * A line of up to FTP_LINE_MAX bytes is allowed wherever it starts in a read:
 * after a complete line in the same read, its start alone counts.
 */
static void test_long_line_after_a_pipelined_one_is_allowed(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char *bytes = malloc(FTP_LINE_MAX);
	char *want = malloc(FTP_LINE_MAX + 8);

	assert_non_null(bytes);
	assert_non_null(want);
	greet(env);
	/* "NOOP\r\n" and the first FTP_LINE_MAX - 6 bytes of a RETR: one full read. */
	memcpy(bytes, "NOOP\r\nRETR ", 11);
	memset(bytes + 11, 'f', FTP_LINE_MAX - 11);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), FTP_LINE_MAX);
	feed(env, FTP_CLIENT, bytes, FTP_LINE_MAX);
	assert_null(ftp_filter_failure(env->f));
	expect(env, FTP_SERVER, "NOOP\r\n");
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 6);
	/* Its end: FTP_LINE_MAX - 4 bytes in all. */
	feeds(env, FTP_CLIENT, "\r\n");
	assert_null(ftp_filter_failure(env->f));
	memcpy(want, bytes + 6, FTP_LINE_MAX - 6);
	memcpy(want + FTP_LINE_MAX - 6, "\r\n", 2);
	expect_len(env, FTP_SERVER, want, FTP_LINE_MAX - 4);

	/* The same on the server's side. */
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n");
	memcpy(bytes, "200 ok\r\n", 8);
	memset(bytes + 8, 'r', FTP_LINE_MAX - 8);
	memcpy(bytes + 8, "150 ", 4);
	feed(env, FTP_SERVER, bytes, FTP_LINE_MAX);
	assert_null(ftp_filter_failure(env->f));
	feeds(env, FTP_SERVER, "\n");
	assert_null(ftp_filter_failure(env->f));
	memcpy(want, bytes, FTP_LINE_MAX);
	want[FTP_LINE_MAX] = '\n';
	expect_len(env, FTP_CLIENT, want, FTP_LINE_MAX + 1);
	free(bytes);
	free(want);
}

static void test_room_zero_while_the_queue_is_full(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char many[20 * 6 + 1] = "";
	char want[20 * 6 + 1] = "";

	greet(env);
	for (int i = 0; i < 20; i++)
		strcat(many, "NOOP\r\n");
	/* 20 commands in one read: 16 go out, 4 wait, nothing more is read. */
	feeds(env, FTP_CLIENT, many);
	for (int i = 0; i < QUEUE_MAX; i++)
		strcat(want, "NOOP\r\n");
	expect(env, FTP_SERVER, want);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	assert_true(ftp_filter_room(env->f, FTP_SERVER) > 0);
	/* Each answer lets one more through. */
	for (int i = 0; i < 4; i++) {
		feeds(env, FTP_SERVER, "200 ok\r\n");
		expect(env, FTP_CLIENT, "200 ok\r\n");
		expect(env, FTP_SERVER, "NOOP\r\n");
		assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	}
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n");
	expect(env, FTP_SERVER, "");
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), FTP_LINE_MAX);
}

/* Before the greeting its answer is outstanding: 15 commands fill the queue. */
static void test_queue_counts_the_greeting(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char many[QUEUE_MAX * 6 + 1] = "";
	char want[QUEUE_MAX * 6 + 1] = "";

	for (int i = 0; i < QUEUE_MAX; i++)
		strcat(many, "NOOP\r\n");
	feeds(env, FTP_CLIENT, many);
	for (int i = 0; i < QUEUE_MAX - 1; i++)
		strcat(want, "NOOP\r\n");
	expect(env, FTP_SERVER, want);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	feeds(env, FTP_SERVER, "220 Ready\r\n");
	expect(env, FTP_CLIENT, "220 Ready\r\n");
	expect(env, FTP_SERVER, "NOOP\r\n");
}

/* The client's output backed up: the server is not read, nor the client. */
static void test_room_zero_while_the_client_output_is_backed_up(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char line[1001];
	size_t fed = 0;

	greet(env);
	feeds(env, FTP_CLIENT, "LIST\r\n");
	expect(env, FTP_SERVER, "LIST\r\n");
	memset(line, 'x', sizeof line);
	memcpy(line, "150-", 4);
	memcpy(line + sizeof line - 2, "\r\n", 2);
	while (ftp_filter_room(env->f, FTP_SERVER) >= sizeof line) {
		feed(env, FTP_SERVER, line, sizeof line);
		fed += sizeof line;
		assert_true(fed < 10 * OUT_PAUSE);
	}
	assert_int_equal(ftp_filter_room(env->f, FTP_SERVER), 0);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	assert_true(pending(env, FTP_CLIENT) >= OUT_PAUSE);
	assert_true(pending(env, FTP_CLIENT) < OUT_PAUSE + sizeof line);
	assert_int_equal(pending(env, FTP_CLIENT), fed);
	/* Down to the pause mark exactly: still not. One byte below: both read again. */
	ftp_filter_sent(env->f, FTP_CLIENT, fed - OUT_PAUSE);
	assert_int_equal(ftp_filter_room(env->f, FTP_SERVER), 0);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	ftp_filter_sent(env->f, FTP_CLIENT, 1);
	assert_int_equal(ftp_filter_room(env->f, FTP_SERVER), FTP_LINE_MAX);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), FTP_LINE_MAX);
	ftp_filter_sent(env->f, FTP_CLIENT, fed);
	assert_true(ftp_filter_room(env->f, FTP_SERVER) > 0);
	assert_true(ftp_filter_room(env->f, FTP_CLIENT) > 0);
	feeds(env, FTP_SERVER, "150 Here it comes.\r\n226 Done\r\n");
	expect(env, FTP_CLIENT, "150 Here it comes.\r\n226 Done\r\n");
	assert_null(ftp_filter_failure(env->f));
}

/* The server's output backed up: the client is not read; lines read wait. */
static void test_room_zero_while_the_server_output_is_backed_up(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char line[1907];
	char four[4 * sizeof line];
	unsigned lines = 0;

	greet(env);
	memset(line, 's', sizeof line);
	memcpy(line, "STOR ", 5);
	memcpy(line + sizeof line - 2, "\r\n", 2);
	while (ftp_filter_room(env->f, FTP_CLIENT) > 0) {
		feed(env, FTP_CLIENT, line, sizeof line);
		lines++;
		assert_true(lines < QUEUE_MAX);
	}
	/* 9 lines of 1907 bytes pass 16384; the queue (16) is not what stops it. */
	assert_int_equal(lines, 9);
	assert_int_equal(pending(env, FTP_SERVER), 9 * sizeof line);
	assert_true(ftp_filter_room(env->f, FTP_SERVER) > 0);
	/* Down to the pause mark exactly: still not. One byte below: read again. */
	ftp_filter_sent(env->f, FTP_SERVER, 9 * sizeof line - OUT_PAUSE);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	ftp_filter_sent(env->f, FTP_SERVER, 1);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), FTP_LINE_MAX);
	/* Four lines in one read: the first passes, three wait for room. */
	for (int i = 0; i < 4; i++)
		memcpy(four + i * sizeof line, line, sizeof line);
	feed(env, FTP_CLIENT, four, sizeof four);
	assert_int_equal(pending(env, FTP_SERVER), OUT_PAUSE - 1 + sizeof line);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	/* Once the server takes it all, the three go out. */
	ftp_filter_sent(env->f, FTP_SERVER, pending(env, FTP_SERVER));
	expect_len(env, FTP_SERVER, four, 3 * sizeof line);
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), FTP_LINE_MAX);
	assert_null(ftp_filter_failure(env->f));
}

/* ---- EOF ----------------------------------------------------------------------------- */

static void test_eof_drops_a_partial_command(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT, "NOOP\r\nPORT 10,0,0,99,19,137");
	expect(env, FTP_SERVER, "NOOP\r\n");
	assert_false(ftp_filter_input_done(env->f, FTP_CLIENT));
	ftp_filter_eof(env->f, FTP_CLIENT);
	expect_nothing(env);
	assert_true(ftp_filter_input_done(env->f, FTP_CLIENT));
	assert_int_equal(ftp_filter_room(env->f, FTP_CLIENT), 0);
	assert_int_equal(env->active_calls, 0);
	/* The server still answers what did pass. */
	feeds(env, FTP_SERVER, "200 ok\r\n");
	expect(env, FTP_CLIENT, "200 ok\r\n");
	assert_false(ftp_filter_input_done(env->f, FTP_SERVER));
}

static void test_eof_passes_a_partial_reply(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	feeds(env, FTP_SERVER, "220 Ready\r\n421 Going away");
	expect(env, FTP_CLIENT, "220 Ready\r\n");
	ftp_filter_eof(env->f, FTP_SERVER);
	expect(env, FTP_CLIENT, "421 Going away");
	assert_true(ftp_filter_input_done(env->f, FTP_SERVER));
	assert_int_equal(ftp_filter_room(env->f, FTP_SERVER), 0);
	/* A partial 227 to a PASV passes as it is: no listener. */
	struct env *env2 = env_new("203.0.113.5", AF_INET);
	feeds(env2, FTP_SERVER, "220 Ready\r\n");
	feeds(env2, FTP_CLIENT, "PASV\r\n");
	feeds(env2, FTP_SERVER, "227 Entering Passive Mode (10,0,0,9,117,48)");
	ftp_filter_eof(env2->f, FTP_SERVER);
	expect(env2, FTP_CLIENT, "220 Ready\r\n227 Entering Passive Mode (10,0,0,9,117,48)");
	assert_int_equal(env2->passive_calls, 0);
	env_free(env2);
}

/* EOF while commands wait for room: input is done only once they are handled. */
static void test_eof_after_commands_that_wait(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char many[18 * 6 + 1] = "";

	greet(env);
	for (int i = 0; i < 18; i++)
		strcat(many, "NOOP\r\n");
	feeds(env, FTP_CLIENT, many);
	ftp_filter_eof(env->f, FTP_CLIENT);
	assert_false(ftp_filter_input_done(env->f, FTP_CLIENT));
	assert_int_equal(pending(env, FTP_SERVER), QUEUE_MAX * 6);
	ftp_filter_sent(env->f, FTP_SERVER, QUEUE_MAX * 6);
	feeds(env, FTP_SERVER, "200 ok\r\n200 ok\r\n");
	expect(env, FTP_SERVER, "NOOP\r\nNOOP\r\n");
	assert_true(ftp_filter_input_done(env->f, FTP_CLIENT));
}

/*
 * After the server's FIN nothing will be answered: the client's commands
 * still pass (the server may read on), the queue stays bounded, and a
 * refusal never overtakes the answers it waits behind.
 */
static void test_server_gone_keeps_order_and_bounds(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char want[QUEUE_MAX * 6 + 1] = "";

	greet(env);
	ftp_filter_eof(env->f, FTP_SERVER);
	assert_true(ftp_filter_input_done(env->f, FTP_SERVER));
	/* Nothing outstanding: answered at once. */
	refused(env, "LPSV\r\n", R_LONG_FORM);
	for (int i = 0; i < QUEUE_MAX; i++) {
		feeds(env, FTP_CLIENT, "NOOP\r\n");
		strcat(want, "NOOP\r\n");
	}
	expect(env, FTP_SERVER, want);
	assert_true(ftp_filter_room(env->f, FTP_CLIENT) > 0);
	/* Sixteen NOOPs will never be answered: the 502 must not go before them. */
	feeds(env, FTP_CLIENT, "LPSV\r\n");
	expect_nothing(env);
	for (int i = 0; i < 40; i++) {
		feeds(env, FTP_CLIENT, "NOOP\r\n");
		expect(env, FTP_SERVER, "NOOP\r\n");
		feeds(env, FTP_CLIENT, "LPRT\r\n");
		expect_nothing(env);
	}
	ftp_filter_eof(env->f, FTP_CLIENT);
	assert_true(ftp_filter_input_done(env->f, FTP_CLIENT));
	assert_null(ftp_filter_failure(env->f));
}

/* ---- urgent data (ABOR) ---------------------------------------------------------- */

static void expect_urgent(struct env *env, enum ftp_side side, const char *want, size_t want_len,
			  size_t want_urgent)
{
	const char *data;
	size_t urgent_len;
	size_t len = ftp_filter_output(env->f, side, &data, &urgent_len);

	if (len != want_len || (len > 0 && memcmp(data, want, len) != 0)) {
		show("got", data, len);
		show("want", want, want_len);
		fail();
	}
	assert_int_equal(urgent_len, want_urgent);
}

static void test_urgent_byte_carried_to_the_output(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	const char *data;
	size_t urgent_len;

	greet(env);
	/* IAC IP, then IAC (urgent: the read at the mark starts with it) DM ABOR. */
	feeds(env, FTP_CLIENT, "\xff\xf4");
	expect(env, FTP_SERVER, "");
	feed_urgent(env, FTP_CLIENT, S("\xff\xf2" "ABOR\r\n"), 0);
	expect_urgent(env, FTP_SERVER, S("\xff\xf4\xff\xf2" "ABOR\r\n"), 3);
	ftp_filter_sent(env->f, FTP_SERVER, 3);
	assert_int_equal(ftp_filter_output(env->f, FTP_SERVER, &data, &urgent_len), 7);
	assert_int_equal(urgent_len, 0);
	ftp_filter_sent(env->f, FTP_SERVER, 7);
	feeds(env, FTP_SERVER, "426 Aborted\r\n226 ABOR ok\r\n");
	expect(env, FTP_CLIENT, "426 Aborted\r\n226 ABOR ok\r\n");

	/* Behind output not sent yet, and pipelined after another command. */
	feeds(env, FTP_CLIENT, "RETR f\r\n");
	feed_urgent(env, FTP_CLIENT, S("NOOP\r\n\xff\xf4\xff\xf2" "ABOR\r\n"), 8);
	expect_urgent(env, FTP_SERVER, S("RETR f\r\nNOOP\r\n\xff\xf4\xff\xf2" "ABOR\r\n"), 17);
	ftp_filter_sent(env->f, FTP_SERVER, 10);
	expect_urgent(env, FTP_SERVER, S("OP\r\n\xff\xf4\xff\xf2" "ABOR\r\n"), 7);
	ftp_filter_sent(env->f, FTP_SERVER, 7);
	expect_urgent(env, FTP_SERVER, S("\xf2" "ABOR\r\n"), 0);
	ftp_filter_sent(env->f, FTP_SERVER, 7);
	feeds(env, FTP_SERVER, "150 x\r\n226 ok\r\n200 ok\r\n225 ok\r\n");
	expect(env, FTP_CLIENT, "150 x\r\n226 ok\r\n200 ok\r\n225 ok\r\n");

	/* An urgent byte in a line the relay answers itself goes nowhere. */
	feed_urgent(env, FTP_CLIENT, S("\xff\xf4LPSV\r\n"), 1);
	expect(env, FTP_CLIENT, R_LONG_FORM);
	expect_urgent(env, FTP_SERVER, "", 0, 0);
	/* Nor does one in a partial command dropped at EOF. */
	feed_urgent(env, FTP_CLIENT, S("\xff\xf4\xff\xf2" "AB"), 2);
	ftp_filter_eof(env->f, FTP_CLIENT);
	expect_urgent(env, FTP_SERVER, "", 0, 0);
}

/* The urgent mark stays on its byte when the output buffer moves its bytes. */
static void test_urgent_byte_survives_output_compaction(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);
	char a[500], b[600], want[1024];
	static const char abor[] = "\xff\xf4\xff\xf2" "ABOR\r\n";

	greet(env);
	memset(a, 'a', sizeof a);
	memcpy(a, "RETR ", 5);
	memcpy(a + sizeof a - 2, "\r\n", 2);
	memset(b, 'b', sizeof b);
	memcpy(b, "RETR ", 5);
	memcpy(b + sizeof b - 2, "\r\n", 2);
	feed(env, FTP_CLIENT, a, sizeof a);
	feed_urgent(env, FTP_CLIENT, abor, sizeof abor - 1, 2);
	ftp_filter_sent(env->f, FTP_SERVER, 400);
	/* 110 bytes left at offset 400; 600 more do not fit behind them. */
	feed(env, FTP_CLIENT, b, sizeof b);
	memcpy(want, a + 400, 100);
	memcpy(want + 100, abor, 10);
	memcpy(want + 110, b, sizeof b);
	expect_urgent(env, FTP_SERVER, want, 110 + sizeof b, 103);
	ftp_filter_sent(env->f, FTP_SERVER, 103);
	expect_urgent(env, FTP_SERVER, want + 103, 7 + sizeof b, 0);
}

/* Through the opaque channel urgent data stays urgent, both ways. */
static void test_urgent_byte_in_the_opaque_channel(void **state)
{
	struct env *env = start(state, "203.0.113.5", AF_INET);

	greet(env);
	feeds(env, FTP_CLIENT, "AUTH TLS\r\n");
	expect(env, FTP_SERVER, "AUTH TLS\r\n");
	feeds(env, FTP_SERVER, "234 go\r\n");
	expect(env, FTP_CLIENT, "234 go\r\n");
	feed_urgent(env, FTP_CLIENT, S("\x17\x03\x03"), 1);
	expect_urgent(env, FTP_SERVER, S("\x17\x03\x03"), 2);
	feed_urgent(env, FTP_SERVER, S("\x17\x03\x03\x00"), 3);
	expect_urgent(env, FTP_CLIENT, S("\x17\x03\x03\x00"), 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_session_ipv4_client_ipv4_server, teardown),
		cmocka_unit_test_teardown(test_session_ipv6_client_ipv4_server, teardown),
		cmocka_unit_test_teardown(test_session_ipv4_client_ipv6_server, teardown),
		cmocka_unit_test_teardown(test_session_ipv6_client_ipv6_server, teardown),
		cmocka_unit_test_teardown(test_v4_mapped_client_is_ipv4, teardown),
		cmocka_unit_test_teardown(test_bounce_refused_never_passed, teardown),
		cmocka_unit_test_teardown(test_malformed_and_long_forms_refused, teardown),
		cmocka_unit_test_teardown(test_listener_failures_answer_425, teardown),
		cmocka_unit_test_teardown(test_unreadable_passive_reply_answers_425, teardown),
		cmocka_unit_test_teardown(test_bare_cr_and_nul_refused, teardown),
		cmocka_unit_test_teardown(test_empty_lines_answered_by_the_relay, teardown),
		cmocka_unit_test_teardown(test_epsv_all, teardown),
		cmocka_unit_test_teardown(test_pipelined_refusals_keep_their_turn, teardown),
		cmocka_unit_test_teardown(test_refusal_waits_for_the_greeting, teardown),
		cmocka_unit_test(test_split_at_every_byte_gives_the_same_bytes),
		cmocka_unit_test_teardown(test_multiline_replies_pass_whole, teardown),
		cmocka_unit_test_teardown(test_multiline_227_rewritten, teardown),
		cmocka_unit_test_teardown(test_227_inside_another_reply_is_text, teardown),
		cmocka_unit_test_teardown(test_unsolicited_227_changes_nothing, teardown),
		cmocka_unit_test_teardown(test_preliminary_reply_keeps_the_command_outstanding,
					  teardown),
		cmocka_unit_test_teardown(test_auth_tls_makes_the_channel_opaque, teardown),
		cmocka_unit_test_teardown(test_auth_refused_keeps_filtering, teardown),
		cmocka_unit_test_teardown(test_auth_with_telnet_inside_refused, teardown),
		cmocka_unit_test_teardown(test_long_command_ends_the_session, teardown),
		cmocka_unit_test_teardown(test_long_reply_ends_the_session, teardown),
		cmocka_unit_test_teardown(test_long_line_after_a_pipelined_one_is_allowed, teardown),
		cmocka_unit_test_teardown(test_room_zero_while_the_queue_is_full, teardown),
		cmocka_unit_test_teardown(test_queue_counts_the_greeting, teardown),
		cmocka_unit_test_teardown(test_room_zero_while_the_client_output_is_backed_up,
					  teardown),
		cmocka_unit_test_teardown(test_room_zero_while_the_server_output_is_backed_up,
					  teardown),
		cmocka_unit_test_teardown(test_eof_drops_a_partial_command, teardown),
		cmocka_unit_test_teardown(test_eof_passes_a_partial_reply, teardown),
		cmocka_unit_test_teardown(test_eof_after_commands_that_wait, teardown),
		cmocka_unit_test_teardown(test_server_gone_keeps_order_and_bounds, teardown),
		cmocka_unit_test_teardown(test_urgent_byte_carried_to_the_output, teardown),
		cmocka_unit_test_teardown(test_urgent_byte_survives_output_compaction, teardown),
		cmocka_unit_test_teardown(test_urgent_byte_in_the_opaque_channel, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
