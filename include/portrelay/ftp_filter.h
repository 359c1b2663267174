/*
 * ftp_filter.h - the FTP helper's view of one control connection: bytes in
 * from either side, bytes out to either side, and the data channels it
 * asks its owner to open. No sockets and no event loop, so that unit tests
 * and the fuzzer drive it with plain buffers; ftp_helper.c does the I/O.
 *
 * Bytes are taken apart into lines on the reassembled stream (a command
 * split over several reads, or several in one read, are the same to it).
 * Every command the client sends is answered exactly once, in order: by the
 * server, or by the relay when it refuses the command; a queue of the
 * outstanding commands ties each reply to its command, so a 227 counts only
 * as the answer to the client's PASV.
 *
 *   client PASV/EPSV -> server gets PASV (IPv4 server) or EPSV (IPv6 server);
 *     its 227/229 gives the server's data port; the owner opens a listener
 *     for the client (open_passive) and the client gets 227 or 229 with the
 *     listener's address, in the form it asked for.
 *   client PORT/EPRT -> checked (the client's own address, port >= 1024);
 *     the owner opens a listener for the server (open_active) and the server
 *     gets PORT (IPv4) or EPRT (IPv6) with that listener's address.
 *   LPRT, LPSV, a malformed or foreign PORT/EPRT, PASV over IPv6, data
 *     commands after EPSV ALL, empty lines, lines with a bare CR or NUL:
 *     answered by the relay (5xx), never passed on.
 *   AUTH: the client is not read until the server answers; after a 234 the
 *     channel carries TLS and every byte passes untouched both ways.
 *   A line longer than FTP_LINE_MAX from either side ends the session; the
 *     client gets a 421 first.
 */
#ifndef PORTRELAY_FTP_FILTER_H
#define PORTRELAY_FTP_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "portrelay/ftp_proto.h"
#include "portrelay/net.h"

enum ftp_side {
	FTP_CLIENT = 0,
	FTP_SERVER = 1,
};

/* What the filter asks of its owner. Each returns 0, or -1 when it cannot. */
struct ftp_filter_hooks {
	/*
	 * A passive data channel: listen where the client can connect (its
	 * listener's address and port into *listen_out); its one connection
	 * goes on to the server's data port server_port.
	 */
	int (*open_passive)(void *arg, uint16_t server_port, struct net_addr *listen_out);
	/*
	 * An active data channel: listen where the server can connect (into
	 * *listen_out); its one connection goes on to the client's data port
	 * client_port.
	 */
	int (*open_active)(void *arg, uint16_t client_port, struct net_addr *listen_out);
	/* A command the relay refused, and why (the relay's own words). */
	void (*refused)(void *arg, enum ftp_verb verb, const char *why);
	void *arg;
};

struct ftp_filter_params {
	/* The client's address as the relay sees it (v4-mapped counts as IPv4). */
	struct net_addr client_addr;
	/* AF_INET or AF_INET6: the family the server is reached over. */
	int server_family;
};

struct ftp_filter;

/* NULL when out of memory. */
struct ftp_filter *ftp_filter_new(const struct ftp_filter_params *params,
				  const struct ftp_filter_hooks *hooks);
void ftp_filter_free(struct ftp_filter *filter);

/*
 * How many bytes from `side` the filter takes now (0: not now: its output
 * is backed up, the command queue is full, or an AUTH waits for its reply).
 */
size_t ftp_filter_room(const struct ftp_filter *filter, enum ftp_side side);

/*
 * Bytes read from `side`, at most ftp_filter_room() of them. urgent_at is
 * the index in data of a byte that arrived as TCP urgent data (ABOR's
 * Telnet "synch"), or -1; it is passed on as urgent with its line.
 */
void ftp_filter_feed(struct ftp_filter *filter, enum ftp_side side, const char *data,
		     size_t len, long urgent_at);

/* `side` sent its FIN. A partial command is dropped; a partial reply passed on. */
void ftp_filter_eof(struct ftp_filter *filter, enum ftp_side side);

/* `side` sent its FIN and every byte it sent has been dealt with. */
bool ftp_filter_input_done(const struct ftp_filter *filter, enum ftp_side side);

/*
 * Bytes waiting to go to `side`: *data and the count; *urgent_len is, when
 * non-zero, how many of them to send with MSG_OOB (the last is urgent).
 */
size_t ftp_filter_output(const struct ftp_filter *filter, enum ftp_side side,
			 const char **data, size_t *urgent_len);
/* n bytes of that output were sent. */
void ftp_filter_sent(struct ftp_filter *filter, enum ftp_side side, size_t n);

/*
 * Non-NULL once the session must end (a line over FTP_LINE_MAX): the
 * reason, for the log. The 421 for the client is in its output.
 */
const char *ftp_filter_failure(const struct ftp_filter *filter);

/* The channel carries TLS now (after AUTH and 234): bytes pass untouched. */
bool ftp_filter_is_opaque(const struct ftp_filter *filter);

/* Commands the relay answered itself instead of passing them on. */
uint64_t ftp_filter_refused_count(const struct ftp_filter *filter);

#endif
