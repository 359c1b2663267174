/*
 * test_ftp_proto.c - the FTP control channel's grammar (ftp_proto.h): command
 * classification, reply kinds, PORT/EPRT arguments, the 227 and 229 replies
 * real servers send, and the lines the relay writes, read back by the parsers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "portrelay/ftp_proto.h"
#include "portrelay/net.h"

/* A string literal and its length, embedded NULs included. */
#define S(lit) (lit), (sizeof(lit) - 1)

static struct net_addr ip(const char *text, uint16_t port)
{
	struct net_addr addr;

	if (net_addr_parse_ip(text, port, &addr) != 0) {
		print_error("\"%s\" is not an address\n", text);
		fail();
	}
	return addr;
}

static void assert_addr(const struct net_addr *got, const char *want)
{
	char buf[NET_ADDR_STRLEN];

	net_addr_format(got, buf, sizeof buf);
	if (strcmp(buf, want) != 0) {
		print_error("got %s, want %s\n", buf, want);
		fail();
	}
}

/* Printable form of bytes, for messages: \xNN for the others. */
static const char *shown(const char *bytes, size_t len)
{
	static char buf[4 * 256 + 1];
	size_t o = 0;

	for (size_t i = 0; i < len && o + 5 < sizeof buf; i++) {
		unsigned char c = (unsigned char)bytes[i];
		if (c >= 32 && c < 127)
			buf[o++] = (char)c;
		else
			o += (size_t)snprintf(buf + o, sizeof buf - o, "\\x%02x", c);
	}
	buf[o] = '\0';
	return buf;
}

/* ---- ftp_command_parse -------------------------------------------------- */

static struct ftp_command command(const char *line, size_t len)
{
	struct ftp_command cmd;

	memset(&cmd, 0x5a, sizeof cmd);   /* everything must be set */
	ftp_command_parse(line, len, &cmd);
	return cmd;
}

static void test_command_verbs_any_case(void **state)
{
	static const struct {
		const char *line;
		enum ftp_verb verb;
	} cases[] = {
		{ "PORT 1,2,3,4,5,6", FTP_VERB_PORT }, { "port 1,2,3,4,5,6", FTP_VERB_PORT },
		{ "PoRt 1,2,3,4,5,6", FTP_VERB_PORT }, { "EPRT |1|1.2.3.4|5|", FTP_VERB_EPRT },
		{ "eprt |1|1.2.3.4|5|", FTP_VERB_EPRT }, { "PASV", FTP_VERB_PASV },
		{ "pasv", FTP_VERB_PASV },             { "EPSV", FTP_VERB_EPSV },
		{ "Epsv ALL", FTP_VERB_EPSV },         { "LPRT 4,4,1,2,3,4,2,0,20", FTP_VERB_LPRT },
		{ "LPSV", FTP_VERB_LPSV },             { "lpsv", FTP_VERB_LPSV },
		{ "AUTH TLS", FTP_VERB_AUTH },         { "auth ssl", FTP_VERB_AUTH },
		{ "USER anonymous", FTP_VERB_OTHER },  { "ABOR", FTP_VERB_OTHER },
		{ "RETR PORT", FTP_VERB_OTHER },       { "SITE PORT 1,2,3,4,5,6", FTP_VERB_OTHER },
		{ "PORTX 1,2,3,4,5,6", FTP_VERB_OTHER }, { "POR 1,2,3,4,5,6", FTP_VERB_OTHER },
		{ "PASVV", FTP_VERB_OTHER },           { "XPASV", FTP_VERB_OTHER },
		{ "P@SW", FTP_VERB_OTHER },            { "PO RT 1,2,3,4,5,6", FTP_VERB_OTHER },
		{ "1PORT", FTP_VERB_OTHER },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct ftp_command cmd = command(cases[i].line, strlen(cases[i].line));
		if (cmd.verb != cases[i].verb) {
			print_error("\"%s\": verb %d, want %d\n", cases[i].line, cmd.verb,
				    cases[i].verb);
			fail();
		}
	}
}

static void test_command_argument_and_clean_end(void **state)
{
	struct ftp_command cmd = command(S("PORT 1,2,3,4,5,6"));

	(void)state;
	assert_int_equal(cmd.verb, FTP_VERB_PORT);
	assert_int_equal(cmd.verb_offset, 0);
	assert_false(cmd.leading_blank);
	assert_true(cmd.clean_end);
	assert_false(cmd.empty);
	assert_non_null(cmd.arg);
	assert_int_equal(cmd.arg_len, 11);
	assert_memory_equal(cmd.arg, "1,2,3,4,5,6", 11);

	/* No argument at all, and an empty one after the space. */
	cmd = command(S("PASV"));
	assert_int_equal(cmd.verb, FTP_VERB_PASV);
	assert_true(cmd.clean_end);
	assert_null(cmd.arg);
	assert_int_equal(cmd.arg_len, 0);
	cmd = command(S("PASV "));
	assert_true(cmd.clean_end);
	assert_non_null(cmd.arg);
	assert_int_equal(cmd.arg_len, 0);

	/* Only the verb's one space is taken off: the rest is the argument. */
	cmd = command(S("PORT  1,2,3,4,5,6"));
	assert_int_equal(cmd.arg_len, 12);
	assert_memory_equal(cmd.arg, " 1,2", 4);

	/* A verb ended by anything but a space or the line's end is not clean. */
	static const char *const unclean[] = {
		"PORT\t1,2,3,4,5,6", "PORT,1,2,3,4,5,6", "PASV1", "EPSV\t", "PORT\v1,2,3,4,5,6",
		"EPRT|1|1.2.3.4|5|",
	};
	for (size_t i = 0; i < sizeof unclean / sizeof unclean[0]; i++) {
		cmd = command(unclean[i], strlen(unclean[i]));
		if (cmd.verb == FTP_VERB_OTHER || cmd.clean_end || cmd.arg != NULL) {
			print_error("\"%s\": verb %d clean_end %d arg %p\n", shown(unclean[i],
				    strlen(unclean[i])), cmd.verb, cmd.clean_end, (void *)cmd.arg);
			fail();
		}
	}

	/* The length given is the line: nothing past it is read. */
	cmd = command("PASVX", 4);
	assert_int_equal(cmd.verb, FTP_VERB_PASV);
	assert_true(cmd.clean_end);
}

static void test_command_telnet_prefix_and_blanks(void **state)
{
	(void)state;
	/* ABOR as clients send it: IAC IP, IAC DM (the synch), then the verb. */
	struct ftp_command cmd = command(S("\xff\xf4\xff\xf2" "ABOR"));
	assert_int_equal(cmd.verb, FTP_VERB_OTHER);
	assert_int_equal(cmd.verb_offset, 4);
	assert_false(cmd.leading_blank);
	assert_true(cmd.clean_end);
	assert_false(cmd.empty);

	cmd = command(S("\xff\xf4\xff\xf2" "PORT 1,2,3,4,5,6"));
	assert_int_equal(cmd.verb, FTP_VERB_PORT);
	assert_int_equal(cmd.verb_offset, 4);
	assert_false(cmd.leading_blank);
	assert_memory_equal(cmd.arg, "1,2,3,4,5,6", 11);

	/* WILL/WONT/DO/DONT carry an option byte: three bytes. */
	cmd = command(S("\xff\xfb\x01" "PASV"));
	assert_int_equal(cmd.verb, FTP_VERB_PASV);
	assert_int_equal(cmd.verb_offset, 3);
	cmd = command(S("\xff\xfe" "PPASV"));   /* DONT 'P': the option is the P */
	assert_int_equal(cmd.verb, FTP_VERB_PASV);
	assert_int_equal(cmd.verb_offset, 3);

	/* IAC IAC is a data byte 255, not a Telnet command: no verb. */
	cmd = command(S("\xff\xff" "PASV"));
	assert_int_equal(cmd.verb, FTP_VERB_OTHER);
	assert_int_equal(cmd.verb_offset, 0);
	assert_false(cmd.empty);

	/* Blanks (space, tab) before the verb are skipped and reported. */
	cmd = command(S("  PASV"));
	assert_int_equal(cmd.verb, FTP_VERB_PASV);
	assert_int_equal(cmd.verb_offset, 2);
	assert_true(cmd.leading_blank);
	cmd = command(S("\tPORT 1,2,3,4,5,6"));
	assert_int_equal(cmd.verb, FTP_VERB_PORT);
	assert_true(cmd.leading_blank);
	cmd = command(S("\xff\xf4 \t" "EPRT |1|1.2.3.4|5|"));
	assert_int_equal(cmd.verb, FTP_VERB_EPRT);
	assert_int_equal(cmd.verb_offset, 4);
	assert_true(cmd.leading_blank);

	/* Other control characters are not blanks: no verb at all. */
	cmd = command(S("\vPORT 1,2,3,4,5,6"));
	assert_int_equal(cmd.verb, FTP_VERB_OTHER);
	assert_int_equal(cmd.verb_offset, 0);
}

/*
 * ProFTPD and the BSD ftpd drop Telnet commands anywhere in a line, so
 * "P<IAC IP>ORT" is PORT to them: the verb is seen through them, and such a
 * line is not clean (the filter refuses it rather than pass a hidden PORT).
 */
static void test_command_telnet_inside_the_verb(void **state)
{
	static const struct {
		const char *line;
		size_t len;
		enum ftp_verb verb;
	} cases[] = {
		{ S("P\xff\xf4ORT 10,0,0,99,19,137"), FTP_VERB_PORT },
		{ S("PO\xff\xf2RT 10,0,0,99,19,137"), FTP_VERB_PORT },
		{ S("POR\xff\xfb\x01T 10,0,0,99,19,137"), FTP_VERB_PORT },
		{ S("E\xff\xf1PRT |1|10.0.0.99|5001|"), FTP_VERB_EPRT },
		{ S("PORT\xff\xf4 10,0,0,99,19,137"), FTP_VERB_PORT },
		{ S("A\xff\xf4UTH TLS"), FTP_VERB_AUTH },
		{ S("pa\xff\xf4sv"), FTP_VERB_PASV },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct ftp_command cmd = command(cases[i].line, cases[i].len);
		if (cmd.verb != cases[i].verb || cmd.clean_end) {
			print_error("\"%s\": verb %d clean_end %d\n",
				    shown(cases[i].line, cases[i].len), cmd.verb, cmd.clean_end);
			fail();
		}
	}
	/* IAC IAC inside is a data byte: "P\xffORT" is no command of ours. */
	struct ftp_command cmd = command(S("P\xff\xff" "ORT 1,2,3,4,5,6"));
	assert_int_equal(cmd.verb, FTP_VERB_OTHER);
	/* Telnet commands after the verb's space belong to the argument. */
	cmd = command(S("PORT \xff\xf4" "1,2,3,4,5,6"));
	assert_int_equal(cmd.verb, FTP_VERB_PORT);
	assert_true(cmd.clean_end);
	assert_int_equal(cmd.arg_len, 13);
}

static void test_command_empty_lines(void **state)
{
	static const struct {
		const char *line;
		size_t len;
	} empty[] = {
		{ S("") },
		{ S("   ") },
		{ S("\t") },
		{ S("\xff\xf4\xff\xf2") },
		{ S("\xff\xfb") },   /* WILL without its option: still nothing */
		{ S(" \xff\xf4 ") },
	};

	(void)state;
	for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
		struct ftp_command cmd = command(empty[i].line, empty[i].len);
		if (!cmd.empty || cmd.verb != FTP_VERB_OTHER || cmd.verb_offset != empty[i].len) {
			print_error("\"%s\": empty %d verb %d offset %zu\n",
				    shown(empty[i].line, empty[i].len), cmd.empty, cmd.verb,
				    cmd.verb_offset);
			fail();
		}
	}
	assert_false(command(S("\xff")).empty);   /* a lone IAC is a byte */
	assert_false(command(S(" x")).empty);
	assert_false(command(S("\r")).empty);
}

static void test_verb_names(void **state)
{
	(void)state;
	assert_string_equal(ftp_verb_name(FTP_VERB_PORT), "PORT");
	assert_string_equal(ftp_verb_name(FTP_VERB_EPRT), "EPRT");
	assert_string_equal(ftp_verb_name(FTP_VERB_PASV), "PASV");
	assert_string_equal(ftp_verb_name(FTP_VERB_EPSV), "EPSV");
	assert_string_equal(ftp_verb_name(FTP_VERB_LPRT), "LPRT");
	assert_string_equal(ftp_verb_name(FTP_VERB_LPSV), "LPSV");
	assert_string_equal(ftp_verb_name(FTP_VERB_AUTH), "AUTH");
	assert_string_equal(ftp_verb_name(FTP_VERB_OTHER), "command");
}

/* ---- ftp_reply_parse ---------------------------------------------------- */

static void test_reply_kinds(void **state)
{
	static const struct {
		const char *line;
		enum ftp_reply_kind kind;
		int code;
	} cases[] = {
		{ "220 Welcome", FTP_REPLY_LAST, 220 },
		{ "230-Welcome", FTP_REPLY_FIRST, 230 },
		{ "227", FTP_REPLY_LAST, 227 },
		{ "227 ", FTP_REPLY_LAST, 227 },
		{ "100 x", FTP_REPLY_LAST, 100 },
		{ "599-x", FTP_REPLY_FIRST, 599 },
		{ "150 Opening BINARY mode data connection", FTP_REPLY_LAST, 150 },
		{ "211-Features:", FTP_REPLY_FIRST, 211 },
		{ " EPRT", FTP_REPLY_TEXT, 0 },
		{ " 227 Entering Passive Mode (1,2,3,4,5,6)", FTP_REPLY_TEXT, 0 },
		{ "227x", FTP_REPLY_TEXT, 0 },
		{ "227\t", FTP_REPLY_TEXT, 0 },
		{ "2270 x", FTP_REPLY_TEXT, 0 },
		{ "22", FTP_REPLY_TEXT, 0 },
		{ "", FTP_REPLY_TEXT, 0 },
		{ "600 x", FTP_REPLY_TEXT, 0 },
		{ "000 x", FTP_REPLY_TEXT, 0 },
		{ "099 x", FTP_REPLY_TEXT, 0 },
		{ "1a0 x", FTP_REPLY_TEXT, 0 },
		{ "22a x", FTP_REPLY_TEXT, 0 },
		{ "abc def", FTP_REPLY_TEXT, 0 },
		{ "End", FTP_REPLY_TEXT, 0 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int code = -7;
		enum ftp_reply_kind kind = ftp_reply_parse(cases[i].line, strlen(cases[i].line), &code);
		int want_code = cases[i].kind == FTP_REPLY_TEXT ? -7 : cases[i].code;
		if (kind != cases[i].kind || code != want_code) {
			print_error("\"%s\": kind %d code %d, want %d %d\n", cases[i].line, kind,
				    code, cases[i].kind, want_code);
			fail();
		}
	}
	/* The length given is the line. */
	int code = 0;
	assert_int_equal(ftp_reply_parse("230-x", 3, &code), FTP_REPLY_LAST);
	assert_int_equal(code, 230);
}

/* ---- ftp_parse_port_arg ------------------------------------------------- */

static void test_port_arg_valid(void **state)
{
	static const struct {
		const char *arg;
		const char *want;
	} cases[] = {
		{ "192,168,1,2,117,48", "192.168.1.2:30000" },
		{ "0,0,0,0,0,1", "0.0.0.0:1" },
		{ "255,255,255,255,255,255", "255.255.255.255:65535" },
		{ "001,002,003,004,004,000", "1.2.3.4:1024" },
		{ "10,0,0,1,0,255", "10.0.0.1:255" },
		{ "10,0,0,1,1,0", "10.0.0.1:256" },
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memset(&addr, 0, sizeof addr);
		if (ftp_parse_port_arg(cases[i].arg, strlen(cases[i].arg), &addr) != 0) {
			print_error("\"%s\" rejected\n", cases[i].arg);
			fail();
		}
		assert_int_equal(net_addr_family(&addr), AF_INET);
		assert_int_equal(addr.len, sizeof(struct sockaddr_in));
		assert_addr(&addr, cases[i].want);
	}
	/* Only len bytes are the argument. */
	assert_int_equal(ftp_parse_port_arg("1,2,3,4,5,6,7", 11, &addr), 0);
	assert_addr(&addr, "1.2.3.4:1286");
}

static void test_port_arg_malformed(void **state)
{
	static const struct {
		const char *arg;
		size_t len;
	} bad[] = {
		{ S("256,1,1,1,1,1") },
		{ S("1,1,1,256,1,1") },
		{ S("1,1,1,1,256,1") },
		{ S("1,1,1,1,1,256") },
		{ S("1000,1,1,1,1,1") },
		{ S("1,1,1,1,1,1000") },
		{ S("0001,1,1,1,1,1") },
		{ S("-1,1,1,1,1,1") },
		{ S("1,1,1,1,-1,1") },
		{ S("+1,1,1,1,1,1") },
		{ S("1,1,1,1,+4,1") },
		{ S("1,,1,1,1,1") },
		{ S(",1,1,1,1,1") },
		{ S("1,1,1,1,1,") },
		{ S(",,,,,") },
		{ S("1,1,1,1,1") },
		{ S("1,1,1,1,1,1,1") },
		{ S("1, 1,1,1,1,1") },
		{ S("1 ,1,1,1,1,1") },
		{ S(" 1,1,1,1,1,1") },
		{ S("1,1,1,1,1,1 ") },
		{ S("1,1,1,1,1,1\r") },
		{ S("1,1,1,1,1,1\0") },
		{ S("1,1,1,1\0,1,1") },
		{ S("1,1,1,1,0,0") },   /* port 0 */
		{ S("0,0,0,0,0,0") },
		{ S("99999999999999999999,1,1,1,1,1") },
		{ S("1,1,1,1,1,18446744073709551617") },
		{ S("1,1,1,1,4294967296,1") },
		{ S("1.1.1.1,1,1") },
		{ S("1.1.1.1:80") },
		{ S("a,b,c,d,e,f") },
		{ S("0x1,1,1,1,1,1") },
		{ S("1,1,1,1,1,1a") },
		{ S("(1,1,1,1,1,1)") },
		{ S("") },
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (ftp_parse_port_arg(bad[i].arg, bad[i].len, &addr) != -1) {
			print_error("\"%s\" accepted\n", shown(bad[i].arg, bad[i].len));
			fail();
		}
	}
	assert_int_equal(ftp_parse_port_arg(NULL, 0, &addr), -1);
	/* A very long run of digits: no overflow, no read past len. */
	char *digits = malloc(100001);
	assert_non_null(digits);
	memset(digits, '9', 100000);
	digits[100000] = '\0';
	assert_int_equal(ftp_parse_port_arg(digits, 100000, &addr), -1);
	memcpy(digits, "1,2,3,4,5,", 10);
	assert_int_equal(ftp_parse_port_arg(digits, 100000, &addr), -1);
	free(digits);
}

/* ---- ftp_parse_eprt_arg ------------------------------------------------- */

static void test_eprt_arg_valid(void **state)
{
	static const struct {
		const char *arg;
		int family;
		const char *want;
	} cases[] = {
		/* RFC 2428's own examples */
		{ "|1|132.235.1.2|6275|", AF_INET, "132.235.1.2:6275" },
		{ "|2|1080::8:800:200C:417A|5282|", AF_INET6, "[1080::8:800:200c:417a]:5282" },
		/* any delimiter from 33 to 126 but digits */
		{ "!1!10.0.0.1!2000!", AF_INET, "10.0.0.1:2000" },
		{ "#2#::1#65535#", AF_INET6, "[::1]:65535" },
		{ "~1~10.0.0.1~1~", AF_INET, "10.0.0.1:1" },
		{ "a1a10.0.0.1a1024a", AF_INET, "10.0.0.1:1024" },
		{ "|1|10.0.0.1|01024|", AF_INET, "10.0.0.1:1024" },
		{ "|2|2001:db8::5|40000|", AF_INET6, "[2001:db8::5]:40000" },
		/* v4-mapped stays IPv6 here; the filter unmaps it */
		{ "|2|::ffff:192.0.2.7|5001|", AF_INET6, "[::ffff:192.0.2.7]:5001" },
		{ "|2|ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255|5001|", AF_INET6,
		  "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5001" },
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memset(&addr, 0, sizeof addr);
		if (ftp_parse_eprt_arg(cases[i].arg, strlen(cases[i].arg), &addr) != 0) {
			print_error("\"%s\" rejected\n", cases[i].arg);
			fail();
		}
		assert_int_equal(net_addr_family(&addr), cases[i].family);
		assert_addr(&addr, cases[i].want);
	}
}

static void test_eprt_arg_malformed(void **state)
{
	static const struct {
		const char *arg;
		size_t len;
	} bad[] = {
		/* the family must match the address */
		{ S("|1|::1|5000|") },
		{ S("|2|10.0.0.1|5000|") },
		{ S("|1|::ffff:10.0.0.1|5000|") },
		{ S("|3|10.0.0.1|5000|") },
		{ S("|0|10.0.0.1|5000|") },
		{ S("|12|10.0.0.1|5000|") },
		{ S("|01|10.0.0.1|5000|") },
		{ S("||10.0.0.1|5000|") },
		{ S("|x|10.0.0.1|5000|") },
		/* ports */
		{ S("|1|10.0.0.1|0|") },
		{ S("|1|10.0.0.1|00000|") },
		{ S("|1|10.0.0.1|65536|") },
		{ S("|1|10.0.0.1|99999|") },
		{ S("|1|10.0.0.1|000080|") },
		{ S("|1|10.0.0.1|99999999999999999999|") },
		{ S("|1|10.0.0.1|-1|") },
		{ S("|1|10.0.0.1|+5000|") },
		{ S("|1|10.0.0.1| 5000|") },
		{ S("|1|10.0.0.1||") },
		{ S("|1|10.0.0.1|0x10|") },
		/* shape: delimiters, trailing junk */
		{ S("|1|10.0.0.1|5000|x") },
		{ S("|1|10.0.0.1|5000||") },
		{ S("|1|10.0.0.1|5000| ") },
		{ S("|1|10.0.0.1|5000") },
		{ S("|1|10.0.0.1|5000!") },
		{ S("|1|10.0.0.1!5000!") },
		{ S("|1|10.0.0.1") },
		{ S("|1|") },
		{ S("|1") },
		{ S("|") },
		{ S("") },
		{ S(" 1 10.0.0.1 5000 ") },   /* space is no delimiter */
		{ S("\x7f" "1\x7f" "10.0.0.1\x7f" "5000\x7f") },
		{ S("1110.0.0.1150001") },   /* nor a digit */
		{ S("\xff" "1\xff" "10.0.0.1\xff" "5000\xff") },
		/* addresses */
		{ S("|1||5000|") },
		{ S("|1|256.0.0.1|5000|") },
		{ S("|1|10.0.0|5000|") },
		{ S("|1|10.0.0.1.5|5000|") },
		{ S("|1| 10.0.0.1|5000|") },
		{ S("|1|10.0.0.1 |5000|") },
		{ S("|1|010.0.0.1|5000|") },
		{ S("|1|host.example|5000|") },
		{ S("|2|fe80::1%eth0|5000|") },
		{ S("|2|fe80::1%1|5000|") },
		{ S("|2|[::1]|5000|") },
		{ S("|2|::1::2|5000|") },
		{ S("|2|0000:0000:0000:0000:0000:0000:0000:0000:0000|5000|") },   /* nine groups */
		{ S("|1|10.0.0.1\0|5000|") },
		{ S("|1|10.0.0.1\0junk|5000|") },
		{ S("|2|::1\0|5000|") },
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (ftp_parse_eprt_arg(bad[i].arg, bad[i].len, &addr) != -1) {
			print_error("\"%s\" accepted\n", shown(bad[i].arg, bad[i].len));
			fail();
		}
	}
	assert_int_equal(ftp_parse_eprt_arg(NULL, 0, &addr), -1);

	/* An overlong address, far past any buffer: rejected, nothing overrun. */
	size_t n = 5000;
	char *arg = malloc(n + 16);
	assert_non_null(arg);
	memcpy(arg, "|2|", 3);
	memset(arg + 3, 'f', n);
	memcpy(arg + 3 + n, "|5000|", 6);
	assert_int_equal(ftp_parse_eprt_arg(arg, n + 9, &addr), -1);
	free(arg);
	/* The cut-off copy of a valid argument is not valid. */
	assert_int_equal(ftp_parse_eprt_arg("|1|10.0.0.1|5000|", 16, &addr), -1);
}

/* ---- ftp_parse_227 ------------------------------------------------------ */

static void test_227_formats_real_servers_send(void **state)
{
	static const struct {
		const char *line;
		const char *want;
	} cases[] = {
		/* pure-ftpd */
		{ "227 Entering Passive Mode (127,0,0,1,182,175)", "127.0.0.1:46767" },
		/* vsftpd */
		{ "227 Entering Passive Mode (192,168,1,2,117,48).", "192.168.1.2:30000" },
		/* ProFTPD */
		{ "227 Entering Passive Mode (192,168,1,2,195,80).", "192.168.1.2:50000" },
		/* Microsoft IIS */
		{ "227 Entering Passive Mode (10,0,0,5,19,137).", "10.0.0.5:5001" },
		/* FileZilla Server */
		{ "227 Entering Passive Mode (203,0,113,9,200,1)", "203.0.113.9:51201" },
		/* RFC 1123 4.1.2.6: "227 =h1,h2,h3,h4,p1,p2" */
		{ "227 =192,168,1,2,117,48", "192.168.1.2:30000" },
		/* without parentheses */
		{ "227 Entering Passive Mode 192,168,1,2,117,48", "192.168.1.2:30000" },
		{ "227 Entering Passive Mode. 192,168,1,2,117,48", "192.168.1.2:30000" },
		{ "227 192,168,1,2,117,48", "192.168.1.2:30000" },
		/* spaces after the commas */
		{ "227 Entering Passive Mode (192, 168, 1, 2, 117, 48)", "192.168.1.2:30000" },
		{ "227 Entering Passive Mode (192,  168,1,2,117,  48)", "192.168.1.2:30000" },
		/* a version number or other numbers before */
		{ "227 Entering Passive Mode v2.0 (192,168,1,2,117,48)", "192.168.1.2:30000" },
		{ "227 Server 1.3.8b: Passive Mode (192,168,1,2,117,48)", "192.168.1.2:30000" },
		{ "227 Mode 3 (192,168,1,2,117,48)", "192.168.1.2:30000" },
		{ "227 12,34 then (192,168,1,2,117,48)", "192.168.1.2:30000" },
		/* trailing text, leading zeros, no closing parenthesis */
		{ "227 Entering Passive Mode (192,168,1,2,117,48). Have fun", "192.168.1.2:30000" },
		{ "227 Entering Passive Mode (192,168,001,002,117,048)", "192.168.1.2:30000" },
		{ "227 Entering Passive Mode (192,168,1,2,117,48", "192.168.1.2:30000" },
		{ "227 Entering Passive Mode (0,0,0,0,0,1)", "0.0.0.0:1" },
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memset(&addr, 0, sizeof addr);
		if (ftp_parse_227(cases[i].line, strlen(cases[i].line), &addr) != 0) {
			print_error("\"%s\" rejected\n", cases[i].line);
			fail();
		}
		assert_int_equal(net_addr_family(&addr), AF_INET);
		assert_addr(&addr, cases[i].want);
	}
}

static void test_227_garbage(void **state)
{
	static const struct {
		const char *line;
		size_t len;
	} bad[] = {
		{ S("227 Entering Passive Mode") },
		{ S("227 Entering Passive Mode ()") },
		{ S("227 Entering Passive Mode (192,168,1,2,117)") },
		{ S("227 Entering Passive Mode (192,168,1,2,117,)") },
		{ S("227 Entering Passive Mode (192,168,1,2,,117,48)") },
		{ S("227 Entering Passive Mode (192,168,1,2,117,48,7)") },
		{ S("227 Entering Passive Mode (7,192,168,1,2,117,48)") },
		{ S("227 Entering Passive Mode (256,168,1,2,117,48)") },
		{ S("227 Entering Passive Mode (256,1,2,3,4,5,6)") },
		{ S("227 Entering Passive Mode (192,168,1,2,256,48)") },
		{ S("227 Entering Passive Mode (192,168,1,2,117,1000)") },
		{ S("227 Entering Passive Mode (1920,168,1,2,117,48)") },
		{ S("227 Entering Passive Mode (192,168,1,2,0,0)") },
		{ S("227 Entering Passive Mode (-1,2,3,4,5,6)") },
		{ S("227 Entering Passive Mode (192,168,1,2,+117,48)") },
		{ S("227 Entering Passive Mode (192 ,168,1,2,117,48)") },
		{ S("227 Entering Passive Mode (192.168.1.2:30000)") },
		{ S("227 Entering Passive Mode (192,168,1,2,117,99999999999999999999)") },
		{ S("227 \xff\xfe\xfd") },
		{ S("227 ") },
		{ S("227") },
		{ S("22") },
		{ S("") },
		/* the numbers are after the code: "1,2,3,4,5,6" as the code is not it */
		{ S("1,2,3,4,5,6") },
	};
	struct net_addr addr;

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (ftp_parse_227(bad[i].line, bad[i].len, &addr) != -1) {
			char got[NET_ADDR_STRLEN];
			print_error("\"%s\" accepted as %s\n", shown(bad[i].line, bad[i].len),
				    net_addr_format(&addr, got, sizeof got));
			fail();
		}
	}
	/* Only len bytes are the line: the numbers cut short are not there. */
	assert_int_equal(ftp_parse_227(S("227 Entering Passive Mode (1,2,3,4,5,6)") - 3, &addr),
			 -1);
}

/* ---- ftp_parse_229 ------------------------------------------------------ */

static void test_229_formats(void **state)
{
	static const struct {
		const char *line;
		uint16_t want;
	} cases[] = {
		{ "229 Entering Extended Passive Mode (|||6446|)", 6446 },
		{ "229 Entering Extended Passive Mode (|||6446|).", 6446 },
		{ "229 Entering Extended Passive Mode (|||6446|) ok", 6446 },
		{ "229 Extended Passive mode OK (|||40001|)", 40001 },
		{ "229 (!!!6446!)", 6446 },
		{ "229 (###1#)", 1 },
		{ "229 (~~~65535~)", 65535 },
		{ "229 (|||06446|)", 6446 },
		{ "229 Entering Passive Mode v2 (|||6446|)", 6446 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		uint16_t port = 0;
		if (ftp_parse_229(cases[i].line, strlen(cases[i].line), &port) != 0 ||
		    port != cases[i].want) {
			print_error("\"%s\": port %u, want %u\n", cases[i].line, port, cases[i].want);
			fail();
		}
	}
}

static void test_229_garbage(void **state)
{
	static const struct {
		const char *line;
		size_t len;
	} bad[] = {
		{ S("229 Entering Extended Passive Mode |||6446|") },
		{ S("229 Entering Extended Passive Mode (|||6446|") },
		{ S("229 Entering Extended Passive Mode (|||6446)") },
		{ S("229 Entering Extended Passive Mode (|||6446!)") },
		{ S("229 Entering Extended Passive Mode (|||0|)") },
		{ S("229 Entering Extended Passive Mode (|||00000|)") },
		{ S("229 Entering Extended Passive Mode (|||65536|)") },
		{ S("229 Entering Extended Passive Mode (|||99999|)") },
		{ S("229 Entering Extended Passive Mode (|||999999|)") },
		{ S("229 Entering Extended Passive Mode (|||-1|)") },
		{ S("229 Entering Extended Passive Mode (|||+6446|)") },
		{ S("229 Entering Extended Passive Mode (||||)") },
		{ S("229 Entering Extended Passive Mode (|||)") },
		{ S("229 Entering Extended Passive Mode (||6446|)") },
		{ S("229 Entering Extended Passive Mode (|1|10.0.0.1|6446|)") },
		{ S("229 Entering Extended Passive Mode (|!|6446|)") },
		{ S("229 Entering Extended Passive Mode (   6446 )") },
		{ S("229 Entering Extended Passive Mode (1116446 1)") },
		{ S("229 Entering Extended Passive Mode (\x7f\x7f\x7f" "6446\x7f)") },
		{ S("229 Entering Extended Passive Mode (") },
		{ S("229 Entering Extended Passive Mode (|") },
		{ S("229 Entering Extended Passive Mode (||") },
		{ S("229 Entering Extended Passive Mode (|||") },
		{ S("229 Entering Extended Passive Mode (|||6446") },
		{ S("229 Entering Extended Passive Mode (|||6446|") },
		{ S("229 Entering Extended Passive Mode (|||6446\0|)") },
		{ S("229") },
		{ S("") },
	};

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint16_t port = 4242;
		if (ftp_parse_229(bad[i].line, bad[i].len, &port) != -1 || port != 4242) {
			print_error("\"%s\" accepted (port %u)\n", shown(bad[i].line, bad[i].len), port);
			fail();
		}
	}
}

/* ---- the relay's own lines, and back through the parsers ---------------- */

static void test_format_227_and_round_trip(void **state)
{
	char buf[128];
	struct net_addr addr = ip("192.168.1.2", 30000), back;
	static const char want[] = "227 Entering Passive Mode (192,168,1,2,117,48).\r\n";

	(void)state;
	assert_int_equal(ftp_format_227(buf, sizeof buf, &addr), strlen(want));
	assert_string_equal(buf, want);
	assert_int_equal(ftp_parse_227(buf, strlen(buf) - 2, &back), 0);
	assert_addr(&back, "192.168.1.2:30000");

	/* A v4-mapped address is IPv4 here. */
	addr = ip("::ffff:10.0.0.1", 5001);
	assert_int_equal(ftp_format_227(buf, sizeof buf, &addr),
			 strlen("227 Entering Passive Mode (10,0,0,1,19,137).\r\n"));
	assert_string_equal(buf, "227 Entering Passive Mode (10,0,0,1,19,137).\r\n");

	/* Other IPv6 addresses have no 227. */
	addr = ip("2001:db8::1", 5001);
	assert_int_equal(ftp_format_227(buf, sizeof buf, &addr), -1);

	/* The buffer must hold the line and its NUL. */
	addr = ip("192.168.1.2", 30000);
	assert_int_equal(ftp_format_227(buf, strlen(want), &addr), -1);
	assert_int_equal(ftp_format_227(buf, strlen(want) + 1, &addr), strlen(want));
	assert_int_equal(ftp_format_227(buf, 0, &addr), -1);
}

static void test_format_port_and_round_trip(void **state)
{
	char buf[128];
	struct net_addr addr = ip("10.0.0.1", 40001), back;
	struct ftp_command cmd;

	(void)state;
	assert_int_equal(ftp_format_port(buf, sizeof buf, &addr), 22);
	assert_string_equal(buf, "PORT 10,0,0,1,156,65\r\n");
	ftp_command_parse(buf, strlen(buf) - 2, &cmd);
	assert_int_equal(cmd.verb, FTP_VERB_PORT);
	assert_true(cmd.clean_end);
	assert_int_equal(ftp_parse_port_arg(cmd.arg, cmd.arg_len, &back), 0);
	assert_addr(&back, "10.0.0.1:40001");

	addr = ip("::ffff:10.0.0.1", 40001);
	assert_int_equal(ftp_format_port(buf, sizeof buf, &addr), 22);
	assert_string_equal(buf, "PORT 10,0,0,1,156,65\r\n");
	addr = ip("fd00::1", 40001);
	assert_int_equal(ftp_format_port(buf, sizeof buf, &addr), -1);
	addr = ip("10.0.0.1", 40001);
	assert_int_equal(ftp_format_port(buf, 22, &addr), -1);
}

static void test_format_229_and_round_trip(void **state)
{
	static const char want[] = "229 Entering Extended Passive Mode (|||6446|)\r\n";
	char buf[128];
	uint16_t port = 0;

	(void)state;
	assert_int_equal(ftp_format_229(buf, sizeof buf, 6446), strlen(want));
	assert_string_equal(buf, want);
	assert_int_equal(ftp_parse_229(buf, strlen(buf) - 2, &port), 0);
	assert_int_equal(port, 6446);
	assert_int_equal(ftp_format_229(buf, sizeof buf, 0), -1);
	assert_int_equal(ftp_format_229(buf, strlen(want), 6446), -1);
	assert_int_equal(ftp_format_229(buf, strlen(want) + 1, 6446), strlen(want));
}

static void test_format_eprt_and_round_trip(void **state)
{
	char buf[128];
	struct net_addr addr, back;
	struct ftp_command cmd;
	static const struct {
		const char *ip;
		const char *line;
		const char *back;
	} cases[] = {
		{ "10.0.0.1", "EPRT |1|10.0.0.1|40001|\r\n", "10.0.0.1:40001" },
		{ "::ffff:10.0.0.1", "EPRT |1|10.0.0.1|40001|\r\n", "10.0.0.1:40001" },
		{ "fd00::1", "EPRT |2|fd00::1|40001|\r\n", "[fd00::1]:40001" },
		{ "2001:db8::5", "EPRT |2|2001:db8::5|40001|\r\n", "[2001:db8::5]:40001" },
		{ "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
		  "EPRT |2|ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe|40001|\r\n",
		  "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:40001" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		addr = ip(cases[i].ip, 40001);
		assert_int_equal(ftp_format_eprt(buf, sizeof buf, &addr), strlen(cases[i].line));
		assert_string_equal(buf, cases[i].line);
		ftp_command_parse(buf, strlen(buf) - 2, &cmd);
		assert_int_equal(cmd.verb, FTP_VERB_EPRT);
		assert_int_equal(ftp_parse_eprt_arg(cmd.arg, cmd.arg_len, &back), 0);
		net_addr_unmap(&back);
		assert_addr(&back, cases[i].back);
	}

	/* Neither IPv4 nor IPv6: no line. */
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	net_addr_set(&addr, (const struct sockaddr *)&sun, sizeof sun);
	assert_int_equal(ftp_format_eprt(buf, sizeof buf, &addr), -1);
	memset(&addr, 0, sizeof addr);
	assert_int_equal(ftp_format_eprt(buf, sizeof buf, &addr), -1);
	assert_int_equal(ftp_format_227(buf, sizeof buf, &addr), -1);
	assert_int_equal(ftp_format_port(buf, sizeof buf, &addr), -1);
	addr = ip("10.0.0.1", 40001);
	assert_int_equal(ftp_format_eprt(buf, 10, &addr), -1);
}

/* Every port and a spread of addresses survive write-then-read in every form. */
static void test_round_trip_every_port(void **state)
{
	static const char *const v4[] = { "0.0.0.0", "10.0.0.1", "192.168.255.254",
					  "255.255.255.255" };
	char buf[128];
	struct net_addr addr, back;
	uint16_t port;

	(void)state;
	for (unsigned p = 1; p <= 65535; p++) {
		addr = ip(v4[p % 4], (uint16_t)p);
		int n = ftp_format_227(buf, sizeof buf, &addr);
		assert_true(n > 2);
		assert_int_equal(ftp_parse_227(buf, (size_t)n - 2, &back), 0);
		assert_true(net_addr_same_ip(&addr, &back));
		assert_int_equal(net_addr_port(&back), p);

		n = ftp_format_port(buf, sizeof buf, &addr);
		assert_true(n > 7);
		assert_int_equal(ftp_parse_port_arg(buf + 5, (size_t)n - 7, &back), 0);
		assert_int_equal(net_addr_port(&back), p);

		n = ftp_format_229(buf, sizeof buf, (uint16_t)p);
		assert_true(n > 2);
		assert_int_equal(ftp_parse_229(buf, (size_t)n - 2, &port), 0);
		assert_int_equal(port, p);

		addr = ip(p % 2 ? "2001:db8::1" : "10.1.2.3", (uint16_t)p);
		n = ftp_format_eprt(buf, sizeof buf, &addr);
		assert_true(n > 7);
		assert_int_equal(ftp_parse_eprt_arg(buf + 5, (size_t)n - 7, &back), 0);
		assert_true(net_addr_same_ip(&addr, &back));
		assert_int_equal(net_addr_port(&back), p);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_command_verbs_any_case),
		cmocka_unit_test(test_command_argument_and_clean_end),
		cmocka_unit_test(test_command_telnet_prefix_and_blanks),
		cmocka_unit_test(test_command_telnet_inside_the_verb),
		cmocka_unit_test(test_command_empty_lines),
		cmocka_unit_test(test_verb_names),
		cmocka_unit_test(test_reply_kinds),
		cmocka_unit_test(test_port_arg_valid),
		cmocka_unit_test(test_port_arg_malformed),
		cmocka_unit_test(test_eprt_arg_valid),
		cmocka_unit_test(test_eprt_arg_malformed),
		cmocka_unit_test(test_227_formats_real_servers_send),
		cmocka_unit_test(test_227_garbage),
		cmocka_unit_test(test_229_formats),
		cmocka_unit_test(test_229_garbage),
		cmocka_unit_test(test_format_227_and_round_trip),
		cmocka_unit_test(test_format_port_and_round_trip),
		cmocka_unit_test(test_format_229_and_round_trip),
		cmocka_unit_test(test_format_eprt_and_round_trip),
		cmocka_unit_test(test_round_trip_every_port),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
