/*
 * admin_auth.h - who may use the admin endpoint, and from where.
 *
 * The admin token (admin.token_file) is presented either as a bearer header
 * (scripts, Prometheus) or once, through the login form, in exchange for a
 * session: a random 256-bit id in an HttpOnly, SameSite=Strict cookie that
 * expires. Sessions live in memory (a restart logs everyone out), at most
 * ADMIN_SESSIONS at once (a new one replaces the oldest).
 *
 * Guessing: a wrong token costs one unit of a credit that refills at one
 * per second (ADMIN_GUESS_BURST at most); while it is spent, every token
 * presented is refused (429) without being compared, right or wrong, so
 * that no number of connections or addresses guesses faster than one token
 * a second. Sessions already open are not affected.
 *
 * Cross-site requests: a request that changes something (any method but
 * GET and HEAD) must come from the page's own origin when a browser sends
 * it: an Origin header naming another origin, or Sec-Fetch-Site saying
 * cross-site or same-site, refuses it, whatever its credentials (CSRF).
 * Scripts send neither header. Without a token (a loopback endpoint), the
 * Host header must be an IP address or "localhost", so that a web page
 * whose name is made to resolve to 127.0.0.1 cannot talk to it (DNS
 * rebinding).
 */
#ifndef PORTRELAY_ADMIN_AUTH_H
#define PORTRELAY_ADMIN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ADMIN_TOKEN_MAX 512
#define ADMIN_SESSIONS 64
#define ADMIN_SESSION_SECONDS 43200      /* 12 hours */
#define ADMIN_SESSION_ID_LEN 32
#define ADMIN_SESSION_COOKIE "portrelay_session"
#define ADMIN_GUESS_BURST 10.0
/* Seconds a wrong token waits for its answer. */
#define ADMIN_WRONG_TOKEN_DELAY 1

struct admin_session {
	uint8_t id[ADMIN_SESSION_ID_LEN];
	double expires;                  /* monotonic seconds; 0: a free slot */
};

struct admin_auth {
	char token[ADMIN_TOKEN_MAX];     /* empty: no token asked */
	size_t token_len;
	struct admin_session sessions[ADMIN_SESSIONS];
	double guess_credit;             /* wrong tokens allowed now */
	double guess_credit_time;        /* when it was last refilled */
	uint64_t wrong_tokens;           /* all time, for the log */
	uint64_t refused_unchecked;      /* tokens refused while the credit was spent */
};

enum admin_token_check {
	ADMIN_TOKEN_RIGHT,
	ADMIN_TOKEN_WRONG,               /* answer slowly, log */
	ADMIN_TOKEN_NOT_CHECKED,         /* the credit is spent: 429 */
};

/* Reads the token file's first line; -1 after logging. */
int admin_auth_read_token(struct admin_auth *auth, const char *path);

/* Whether a token is asked at all. */
bool admin_auth_required(const struct admin_auth *auth);

/*
 * Compares a presented token (in time that does not depend on where it
 * differs), within the guessing credit. now: monotonic seconds.
 */
enum admin_token_check admin_auth_check_token(struct admin_auth *auth, const char *given,
					      double now);

/* The session of a Cookie header's portrelay_session, if one is open. */
bool admin_auth_session_valid(struct admin_auth *auth, const char *cookie_header, double now);

/*
 * Opens a session; writes its Set-Cookie value into cookie. -1 when no
 * random bytes could be had.
 */
int admin_auth_session_open(struct admin_auth *auth, double now, char *cookie, size_t len);

/* Ends the Cookie header's session, if any; the Set-Cookie value that clears it. */
const char *admin_auth_session_close(struct admin_auth *auth, const char *cookie_header);

/*
 * Whether a request that changes something may go on: origin and
 * fetch_site are its Origin and Sec-Fetch-Site headers (NULL when absent),
 * host its Host header.
 */
bool admin_auth_same_origin(const char *origin, const char *fetch_site, const char *host);

/* Whether a Host header is an IP address or localhost (with any port). */
bool admin_auth_host_is_address(const char *host);

/* Forgets the token and the sessions. */
void admin_auth_clear(struct admin_auth *auth);

#endif
