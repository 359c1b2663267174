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

#include <stddef.h>

struct relay_ctx;
struct ruleset;
struct listener_set;

/*
 * A set of listeners for every TCP port of the enabled forwards of rules,
 * in two steps so that a reload can fail without changing anything
 * (start-up is a reload from nothing, current NULL):
 *
 * listener_set_prepare binds and listens on the ports that current (the
 * set running now, or NULL) does not have, and notes which of current's
 * sockets it takes over: those of a forward in the same place, or on the
 * same address and port. It accepts nothing yet. NULL with err (after
 * logging) on failure; nothing changed then, and listener_set_free undoes
 * a prepared set that is not committed.
 *
 * listener_set_commit moves the taken sockets over (a port that stays
 * never stops listening, and its backlog goes along), starts accepting for
 * the rules' forwards, and frees current, closing the ports no longer
 * forwarded. Call it after relay_ctx_set_rules(rules).
 */
struct listener_set *listener_set_prepare(struct relay_ctx *ctx, const struct ruleset *rules,
					  struct listener_set *current, char *err, size_t err_len);
void listener_set_commit(struct listener_set *set, struct listener_set *current);

/* Number of listening sockets open. */
unsigned listener_set_count(const struct listener_set *set);


void listener_set_free(struct listener_set *set);

#endif
