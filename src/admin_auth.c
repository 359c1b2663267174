/*
 * admin_auth.c - tokens, sessions and origins of admin requests (admin_auth.h).
 */
#include "portrelay/admin_auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "portrelay/log.h"

int admin_auth_read_token(struct admin_auth *auth, const char *path)
{
	FILE *file = fopen(path, "re");
	if (file == NULL) {
		log_error(NULL, "admin.token_file %s: cannot read: %s", path, strerror(errno));
		return -1;
	}
	char line[ADMIN_TOKEN_MAX + 2];
	bool got = fgets(line, sizeof line, file) != NULL;
	fclose(file);
	size_t len = got ? strcspn(line, "\r\n") : 0;
	if (len == 0 || len >= ADMIN_TOKEN_MAX) {
		log_error(NULL, "admin.token_file %s: the first line must hold the token "
			  "(1-%d bytes)", path, ADMIN_TOKEN_MAX - 1);
		return -1;
	}
	memcpy(auth->token, line, len);
	auth->token[len] = '\0';
	auth->token_len = len;
	auth->guess_credit = ADMIN_GUESS_BURST;
	explicit_bzero(line, sizeof line);
	return 0;
}

bool admin_auth_required(const struct admin_auth *auth)
{
	return auth->token_len != 0;
}

/* The same time wherever the first difference is: a 401's timing tells nothing. */
static bool admin_auth_token_equal(const struct admin_auth *auth, const char *given)
{
	size_t given_len = strlen(given);
	unsigned char diff = given_len != auth->token_len;
	for (size_t i = 0; i < auth->token_len; i++)
		diff |= (unsigned char)auth->token[i] ^
			(unsigned char)(i < given_len ? given[i] : 0);
	return diff == 0;
}

enum admin_token_check admin_auth_check_token(struct admin_auth *auth, const char *given,
					      double now)
{
	double refill = now - auth->guess_credit_time;
	auth->guess_credit_time = now;
	if (refill > 0)
		auth->guess_credit += refill;
	if (auth->guess_credit > ADMIN_GUESS_BURST)
		auth->guess_credit = ADMIN_GUESS_BURST;
	if (auth->guess_credit < 1.0) {
		auth->refused_unchecked++;
		return ADMIN_TOKEN_NOT_CHECKED;
	}
	if (admin_auth_token_equal(auth, given))
		return ADMIN_TOKEN_RIGHT;
	auth->guess_credit -= 1.0;
	auth->wrong_tokens++;
	return ADMIN_TOKEN_WRONG;
}

static int admin_auth_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The cookie's session id, decoded; false when the header has none well formed. */
static bool admin_auth_cookie_id(const char *header, uint8_t id[ADMIN_SESSION_ID_LEN])
{
	static const char name[] = ADMIN_SESSION_COOKIE "=";
	const char *p = header;
	while (p != NULL && *p != '\0') {
		while (*p == ' ' || *p == ';')
			p++;
		if (strncmp(p, name, sizeof name - 1) == 0) {
			const char *value = p + sizeof name - 1;
			for (size_t i = 0; i < ADMIN_SESSION_ID_LEN; i++) {
				int high = admin_auth_hex_value(value[2 * i]);
				int low = high < 0 ? -1 : admin_auth_hex_value(value[2 * i + 1]);
				if (low < 0)
					return false;
				id[i] = (uint8_t)(high << 4 | low);
			}
			char end = value[2 * ADMIN_SESSION_ID_LEN];
			return end == '\0' || end == ';' || end == ' ';
		}
		p = strchr(p, ';');
	}
	return false;
}

/* Every slot compared, all bytes: which one matched (if any) takes no less time. */
static struct admin_session *admin_auth_find(struct admin_auth *auth,
					     const uint8_t id[ADMIN_SESSION_ID_LEN], double now)
{
	struct admin_session *found = NULL;
	for (size_t s = 0; s < ADMIN_SESSIONS; s++) {
		struct admin_session *session = &auth->sessions[s];
		unsigned char diff = 0;
		for (size_t i = 0; i < ADMIN_SESSION_ID_LEN; i++)
			diff |= session->id[i] ^ id[i];
		if (diff == 0 && session->expires > now)
			found = session;
	}
	return found;
}

bool admin_auth_session_valid(struct admin_auth *auth, const char *cookie_header, double now)
{
	uint8_t id[ADMIN_SESSION_ID_LEN];
	if (cookie_header == NULL || !admin_auth_cookie_id(cookie_header, id))
		return false;
	return admin_auth_find(auth, id, now) != NULL;
}

int admin_auth_session_open(struct admin_auth *auth, double now, char *cookie, size_t len)
{
	struct admin_session *slot = &auth->sessions[0];
	for (size_t s = 1; s < ADMIN_SESSIONS; s++) {
		if (auth->sessions[s].expires < slot->expires)
			slot = &auth->sessions[s];
	}
	if (getrandom(slot->id, sizeof slot->id, 0) != (ssize_t)sizeof slot->id) {
		slot->expires = 0;
		return -1;
	}
	slot->expires = now + ADMIN_SESSION_SECONDS;
	char hex[2 * ADMIN_SESSION_ID_LEN + 1];
	for (size_t i = 0; i < ADMIN_SESSION_ID_LEN; i++)
		snprintf(hex + 2 * i, 3, "%02x", slot->id[i]);
	snprintf(cookie, len, ADMIN_SESSION_COOKIE "=%s; Path=/; Max-Age=%d; HttpOnly; "
		 "SameSite=Strict", hex, ADMIN_SESSION_SECONDS);
	explicit_bzero(hex, sizeof hex);
	return 0;
}

const char *admin_auth_session_close(struct admin_auth *auth, const char *cookie_header)
{
	uint8_t id[ADMIN_SESSION_ID_LEN];
	if (cookie_header != NULL && admin_auth_cookie_id(cookie_header, id)) {
		struct admin_session *session = admin_auth_find(auth, id, 0);
		if (session != NULL)
			memset(session, 0, sizeof *session);
	}
	return ADMIN_SESSION_COOKIE "=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict";
}

/* origin is "http://HOST" or "https://HOST", HOST being the Host header. */
static bool admin_auth_origin_is_host(const char *origin, const char *host)
{
	const char *rest = NULL;
	if (strncasecmp(origin, "http://", 7) == 0)
		rest = origin + 7;
	else if (strncasecmp(origin, "https://", 8) == 0)
		rest = origin + 8;
	return rest != NULL && host != NULL && host[0] != '\0' && strcasecmp(rest, host) == 0;
}

bool admin_auth_same_origin(const char *origin, const char *fetch_site, const char *host)
{
	if (fetch_site != NULL && (strcasecmp(fetch_site, "cross-site") == 0 ||
				   strcasecmp(fetch_site, "same-site") == 0))
		return false;
	return origin == NULL || admin_auth_origin_is_host(origin, host);
}

bool admin_auth_host_is_address(const char *host)
{
	char name[256];
	if (host == NULL || strlen(host) >= sizeof name)
		return false;
	snprintf(name, sizeof name, "%s", host);
	char *end;
	if (name[0] == '[') {
		end = strchr(name, ']');
		if (end == NULL || (end[1] != '\0' && end[1] != ':'))
			return false;
		*end = '\0';
		struct in6_addr v6;
		return inet_pton(AF_INET6, name + 1, &v6) == 1;
	}
	end = strchr(name, ':');
	if (end != NULL)
		*end = '\0';
	struct in_addr v4;
	return strcasecmp(name, "localhost") == 0 || inet_pton(AF_INET, name, &v4) == 1;
}

void admin_auth_clear(struct admin_auth *auth)
{
	explicit_bzero(auth, sizeof *auth);
}
