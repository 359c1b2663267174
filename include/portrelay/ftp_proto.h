/*
 * ftp_proto.h - the FTP control channel's grammar: one line at a time.
 *
 * Pure functions, no sockets and no state: classify a command line, tell a
 * reply line's code and kind, read and write the arguments that carry
 * addresses (PORT, EPRT, 227, 229). Numbers are read strictly: decimal
 * digits only, each address byte 0-255, ports 1-65535, no overflow. What
 * a line means in its session is ftp_filter's business.
 *
 * Every line given here is one line without its line end (CR LF or LF).
 */
#ifndef PORTRELAY_FTP_PROTO_H
#define PORTRELAY_FTP_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "portrelay/net.h"

/*
 * The longest line, line end included. A path (4,096 bytes at most on
 * Linux) quoted in a 257 reply fits with room to spare; a longer line is
 * not FTP, and ends the control session (see ftp_filter.h).
 */
#define FTP_LINE_MAX 8192

/* The commands the helper acts on; everything else passes untouched. */
enum ftp_verb {
	FTP_VERB_OTHER,
	FTP_VERB_PORT,
	FTP_VERB_EPRT,
	FTP_VERB_PASV,
	FTP_VERB_EPSV,
	FTP_VERB_LPRT,   /* long address forms (RFC 1639): refused */
	FTP_VERB_LPSV,
	FTP_VERB_AUTH,   /* TLS or another security mechanism (RFC 2228) */
};

struct ftp_command {
	enum ftp_verb verb;
	/*
	 * Where the verb started: bytes before it were Telnet commands (IAC
	 * ...) or blanks. A data-connection verb after blanks is suspicious
	 * (some servers skip them, so it would act unseen) and is refused.
	 */
	size_t verb_offset;
	bool leading_blank;
	/* The verb ended at a space, or at the end of the line. */
	bool clean_end;
	const char *arg;     /* after the verb and its one space; NULL if none */
	size_t arg_len;
	/* The line holds nothing but Telnet commands and blanks. */
	bool empty;
};

/*
 * Classifies a command line. The verb is matched without regard to case,
 * after any leading Telnet commands (IAC IP, IAC DM, ... as ABOR is sent)
 * and blanks.
 */
void ftp_command_parse(const char *line, size_t len, struct ftp_command *out);

/* "PORT", "EPSV", ...: the verb's name, for messages. */
const char *ftp_verb_name(enum ftp_verb verb);

enum ftp_reply_kind {
	FTP_REPLY_TEXT,    /* not "ddd" + space/dash: a line inside a multi-line reply */
	FTP_REPLY_FIRST,   /* "ddd-": the first line of a multi-line reply */
	FTP_REPLY_LAST,    /* "ddd " or "ddd" alone: the last (or only) line */
};

/* The kind of a reply line and, unless TEXT, its code (100-599). */
enum ftp_reply_kind ftp_reply_parse(const char *line, size_t len, int *code);

/*
 * PORT's argument, "h1,h2,h3,h4,p1,p2": exactly six decimal numbers of one
 * to three digits, each 0-255, nothing else; the port must not be 0.
 * Fills an IPv4 address with its port. -1 if malformed.
 */
int ftp_parse_port_arg(const char *arg, size_t len, struct net_addr *out);

/*
 * EPRT's argument (RFC 2428), "|1|192.0.2.1|6446|" or "|2|2001:db8::1|6446|":
 * the first character is the delimiter (ASCII 33-126), the protocol 1 or 2
 * must match the address, the port 1-65535, nothing after the last
 * delimiter. -1 if malformed.
 */
int ftp_parse_eprt_arg(const char *arg, size_t len, struct net_addr *out);

/*
 * A 227 reply line (the whole line, code included): the first
 * "h1,h2,h3,h4,p1,p2" in it, with or without parentheses and with any text
 * around (servers differ); spaces after the commas are allowed. Fills an
 * IPv4 address with its port. -1 if there is none.
 */
int ftp_parse_227(const char *line, size_t len, struct net_addr *out);

/*
 * A 229 reply line: the port in "(|||6446|)" (any delimiter, the address
 * fields empty). -1 if there is none or it is not 1-65535.
 */
int ftp_parse_229(const char *line, size_t len, uint16_t *port);

/*
 * The lines the relay writes, each with CR LF; return the length written,
 * or -1 if addr is not of the family the form needs (227 and PORT take
 * IPv4, a v4-mapped IPv6 address counts as IPv4) or buf is too small.
 */
int ftp_format_227(char *buf, size_t len, const struct net_addr *addr);
int ftp_format_229(char *buf, size_t len, uint16_t port);
int ftp_format_port(char *buf, size_t len, const struct net_addr *addr);
int ftp_format_eprt(char *buf, size_t len, const struct net_addr *addr);

#endif
