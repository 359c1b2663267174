/*
 * listener.h - the TCP listening sockets of a relay context, one per
 * external port of every enabled tcp/both forward, and the accept loop that
 * hands accepted clients to tcp_relay.
 *
 * Accept backs off when the process runs out of file descriptors rather than
 * spinning on a listener the kernel keeps reporting as readable.
 */
#ifndef PORTRELAY_LISTENER_H
#define PORTRELAY_LISTENER_H

struct relay_ctx;
struct listener_set;

/* Binds and listens on every port; NULL (after logging why) on failure. */
struct listener_set *listener_set_open(struct relay_ctx *ctx);

/* Number of listening sockets open. */
unsigned listener_set_count(const struct listener_set *set);

/*
 * Stops accepting for a while after fd exhaustion, then retries. Called by
 * the accept loop and by tcp_relay when its outgoing socket() fails.
 */
void listener_set_pause_for_fds(struct listener_set *set);

/*
 * Ends an fd-exhaustion episode (logged once): called when a new session got
 * both its sockets. Cheap when there is no episode.
 */
void listener_set_fds_recovered(struct listener_set *set);

void listener_set_free(struct listener_set *set);

#endif
