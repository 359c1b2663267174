/*
 * ftp_helper.h - the FTP helper on one control connection: moves its bytes
 * through an ftp_filter, and owns the one-shot data listeners the filter
 * asks for.
 *
 * tcp_relay runs a session of an `ftp = true` forward through
 * ftp_helper_run instead of its two pumps; everything else about the
 * session (connect, timeouts, resets, the end) stays tcp_relay's. Each data
 * listener takes exactly one connection, from the one address allowed
 * (the client's for passive mode, the server's for active mode), within
 * ftp.data_timeout; connections from anywhere else are reset and counted.
 * The accepted connection is handed to tcp_relay (ftp_data_start_fn) as an
 * ordinary session with a target the helper decided. Forwards without the
 * helper never reach this module.
 */
#ifndef PORTRELAY_FTP_HELPER_H
#define PORTRELAY_FTP_HELPER_H

#include <stdbool.h>
#include <stdint.h>

#include "portrelay/net.h"

struct relay_ctx;
struct forward;
struct ftp_helper;
/*
 * What a control connection and its data connections share: whether data
 * is flowing, so that a long transfer keeps its idle control connection
 * alive (tcp.idle_timeout), as a router's connection tracking does.
 */
struct ftp_link;

/* Pending data listeners per control connection; a new one closes the oldest. */
#define FTP_DATA_LISTENERS_MAX 4

/* A data connection accepted by a data listener, and where it goes. */
struct ftp_data_channel {
	int accepted_fd;               /* non-blocking; ownership passes on */
	struct net_addr accepted_addr; /* the peer that connected */
	struct net_addr target;        /* where the relay connects for it */
	struct net_addr source;        /* the relay's local address for that connect */
	bool accepted_from_server;     /* active mode: the server connected */
	struct ftp_link *link;         /* a reference: give it back with ftp_link_data_closed */
};

/* Takes ownership of channel->accepted_fd. */
typedef void (*ftp_data_start_fn)(struct relay_ctx *ctx, const struct forward *fwd,
				  const struct ftp_data_channel *channel);

/*
 * A helper for a control connection whose both sockets are connected.
 * NULL when out of memory or the sockets' addresses cannot be read.
 */
struct ftp_helper *ftp_helper_new(struct relay_ctx *ctx, const struct forward *fwd,
				  int client_fd, int internal_fd, ftp_data_start_fn start_data);

/* Closes the pending data listeners (not data connections already running). */
void ftp_helper_free(struct ftp_helper *helper);

/* A reload moved the control connection onto an identical forward of the new rules. */
void ftp_helper_set_forward(struct ftp_helper *helper, const struct forward *fwd);

/* What a run of the helper leaves the session to do. */
struct ftp_helper_status {
	short client_events;     /* EV_READ / EV_WRITE to wait for on each socket */
	short internal_events;
	bool done;               /* both sides sent FIN and everything was delivered */
	int error;               /* a socket error (errno), or 0 */
	bool error_from_client;  /* which socket it came from */
	const char *failure;     /* the helper ends the session: why */
};

/* Moves what can be moved now, both ways. */
void ftp_helper_run(struct ftp_helper *helper, struct ftp_helper_status *status);

/* A data connection has ended: drops its reference to the link. */
void ftp_link_data_closed(struct ftp_link *link);

/* Whether any data connection of this control connection is open. */
bool ftp_helper_data_active(const struct ftp_helper *helper);

/* Bytes delivered to the internal side and to the client so far. */
uint64_t ftp_helper_bytes_to_internal(const struct ftp_helper *helper);
uint64_t ftp_helper_bytes_to_client(const struct ftp_helper *helper);

#endif
