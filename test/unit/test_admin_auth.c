/*
 * test_admin_auth.c - who may use the admin endpoint (admin_auth.h): the
 * session cookie as the Cookie header carries it, sessions opening,
 * expiring, closing and evicting each other, the token compared within the
 * guessing credit, the CSRF origin check and the DNS-rebinding Host check.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "portrelay/admin_auth.h"

#define TOKEN "s3cret-token"
#define NOW 1000.0
#define HEX_LEN (2 * ADMIN_SESSION_ID_LEN)

static struct admin_auth *new_auth(void)
{
	struct admin_auth *auth = calloc(1, sizeof *auth);
	char path[] = "/tmp/portrelay-test-token.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, TOKEN "\n", strlen(TOKEN) + 1), (ssize_t)strlen(TOKEN) + 1);
	close(fd);
	assert_int_equal(admin_auth_read_token(auth, path), 0);
	unlink(path);
	assert_true(admin_auth_required(auth));
	return auth;
}

/* Opens a session at now; its id (64 hex digits) into hex. */
static void open_session(struct admin_auth *auth, double now, char hex[HEX_LEN + 1])
{
	char cookie[256];
	static const char name[] = ADMIN_SESSION_COOKIE "=";
	assert_int_equal(admin_auth_session_open(auth, now, cookie, sizeof cookie), 0);
	assert_memory_equal(cookie, name, strlen(name));
	memcpy(hex, cookie + strlen(name), HEX_LEN);
	hex[HEX_LEN] = '\0';
	assert_int_equal(strspn(hex, "0123456789abcdef"), HEX_LEN);
	assert_non_null(strstr(cookie, "; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict"));
}

static bool valid(struct admin_auth *auth, double now, const char *fmt, const char *hex)
{
	char header[512];
	snprintf(header, sizeof header, fmt, hex);
	return admin_auth_session_valid(auth, header, now);
}

static void test_token_file(void **state)
{
	(void)state;
	struct admin_auth auth = { .token_len = 0 };
	assert_false(admin_auth_required(&auth));
	assert_int_equal(admin_auth_read_token(&auth, "/nonexistent/token"), -1);
	struct admin_auth *a = new_auth();
	assert_string_equal(a->token, TOKEN);
	assert_int_equal(a->token_len, strlen(TOKEN));
	admin_auth_clear(a);
	assert_false(admin_auth_required(a));
	free(a);
}

static void test_cookie_parsing(void **state)
{
	(void)state;
	struct admin_auth *auth = new_auth();
	char hex[HEX_LEN + 1], other[HEX_LEN + 1];
	open_session(auth, NOW, hex);

	assert_true(valid(auth, NOW, "portrelay_session=%s", hex));
	/* Among other cookies, with or without spaces. */
	assert_true(valid(auth, NOW, "theme=dark; portrelay_session=%s; lang=en", hex));
	assert_true(valid(auth, NOW, "a=b;portrelay_session=%s;c=d", hex));
	assert_true(valid(auth, NOW, "a=b; portrelay_session=%s ", hex));
	/* Not a cookie of that name. */
	assert_false(valid(auth, NOW, "xportrelay_session=%s", hex));
	assert_false(valid(auth, NOW, "a=portrelay_session=%s", hex));
	assert_false(valid(auth, NOW, "portrelay_session_old=%s", hex));
	assert_false(admin_auth_session_valid(auth, NULL, NOW));
	assert_false(admin_auth_session_valid(auth, "", NOW));
	assert_false(admin_auth_session_valid(auth, "portrelay_session=", NOW));

	/* Wrong length: one digit short, one digit more. */
	char shorter[HEX_LEN + 1];
	memcpy(shorter, hex, HEX_LEN - 1);
	shorter[HEX_LEN - 1] = '\0';
	assert_false(valid(auth, NOW, "portrelay_session=%s", shorter));
	assert_false(valid(auth, NOW, "portrelay_session=%s0", hex));
	assert_false(valid(auth, NOW, "portrelay_session=%s0; a=b", hex));

	/* Uppercase hex is not what was handed out. */
	char upper[HEX_LEN + 1];
	for (size_t i = 0; i <= HEX_LEN; i++)
		upper[i] = (char)(hex[i] >= 'a' && hex[i] <= 'f' ? hex[i] - 'a' + 'A' : hex[i]);
	if (strcmp(upper, hex) != 0)
		assert_false(valid(auth, NOW, "portrelay_session=%s", upper));
	/* One digit changed: another id. */
	memcpy(other, hex, sizeof other);
	other[10] = other[10] == '0' ? '1' : '0';
	assert_false(valid(auth, NOW, "portrelay_session=%s", other));

	/* Two cookies of that name: the first one counts. */
	char header[512];
	snprintf(header, sizeof header, "portrelay_session=%s; portrelay_session=%s", hex, other);
	assert_true(admin_auth_session_valid(auth, header, NOW));
	snprintf(header, sizeof header, "portrelay_session=%s; portrelay_session=%s", other, hex);
	assert_false(admin_auth_session_valid(auth, header, NOW));
	free(auth);
}

static void test_session_expires_and_closes(void **state)
{
	(void)state;
	struct admin_auth *auth = new_auth();
	char hex[HEX_LEN + 1], header[256];
	open_session(auth, NOW, hex);
	snprintf(header, sizeof header, "portrelay_session=%s", hex);

	assert_true(admin_auth_session_valid(auth, header, NOW));
	assert_true(admin_auth_session_valid(auth, header, NOW + ADMIN_SESSION_SECONDS - 1));
	assert_false(admin_auth_session_valid(auth, header, NOW + ADMIN_SESSION_SECONDS));
	assert_false(admin_auth_session_valid(auth, header, NOW + ADMIN_SESSION_SECONDS + 3600));

	/* Closing ends it, and says how to clear the cookie. */
	char second[HEX_LEN + 1], header2[256];
	open_session(auth, NOW, second);
	snprintf(header2, sizeof header2, "a=b; portrelay_session=%s", second);
	assert_true(admin_auth_session_valid(auth, header2, NOW + 1));
	const char *clear = admin_auth_session_close(auth, header2);
	assert_non_null(strstr(clear, "portrelay_session=;"));
	assert_non_null(strstr(clear, "Max-Age=0"));
	assert_false(admin_auth_session_valid(auth, header2, NOW + 1));
	/* Closing nothing, or again, is harmless. */
	assert_non_null(admin_auth_session_close(auth, NULL));
	assert_non_null(admin_auth_session_close(auth, header2));
	free(auth);
}

static void test_sessions_evict_the_oldest(void **state)
{
	(void)state;
	struct admin_auth *auth = new_auth();
	char hex[ADMIN_SESSIONS + 1][HEX_LEN + 1];
	for (int i = 0; i <= ADMIN_SESSIONS; i++)
		open_session(auth, NOW + i, hex[i]);
	double now = NOW + ADMIN_SESSIONS + 1;
	/* The 65th replaced the first; every other one is still open. */
	assert_false(valid(auth, now, "portrelay_session=%s", hex[0]));
	for (int i = 1; i <= ADMIN_SESSIONS; i++)
		assert_true(valid(auth, now, "portrelay_session=%s", hex[i]));
	free(auth);
}

static void test_check_token(void **state)
{
	(void)state;
	struct admin_auth *auth = new_auth();
	double now = NOW;
	assert_int_equal(admin_auth_check_token(auth, TOKEN, now), ADMIN_TOKEN_RIGHT);
	assert_int_equal(admin_auth_check_token(auth, "s3cret-tokeN", now), ADMIN_TOKEN_WRONG);
	/* Lengths that differ: a prefix, one byte more, nothing. */
	assert_int_equal(admin_auth_check_token(auth, "s3cret-toke", now), ADMIN_TOKEN_WRONG);
	assert_int_equal(admin_auth_check_token(auth, TOKEN "x", now), ADMIN_TOKEN_WRONG);
	assert_int_equal(admin_auth_check_token(auth, "", now), ADMIN_TOKEN_WRONG);
	assert_int_equal(auth->wrong_tokens, 4);
	/* Right ones cost nothing. */
	for (int i = 0; i < 50; i++)
		assert_int_equal(admin_auth_check_token(auth, TOKEN, now), ADMIN_TOKEN_RIGHT);
	free(auth);
}

static void test_guessing_credit(void **state)
{
	(void)state;
	struct admin_auth *auth = new_auth();
	double now = NOW;
	for (int i = 0; i < (int)ADMIN_GUESS_BURST; i++)
		assert_int_equal(admin_auth_check_token(auth, "guess", now), ADMIN_TOKEN_WRONG);
	/* Spent: every token is refused unchecked, the right one too. */
	assert_int_equal(admin_auth_check_token(auth, "guess", now), ADMIN_TOKEN_NOT_CHECKED);
	assert_int_equal(admin_auth_check_token(auth, TOKEN, now + 0.5), ADMIN_TOKEN_NOT_CHECKED);
	assert_int_equal(auth->refused_unchecked, 2);
	assert_int_equal(auth->wrong_tokens, (uint64_t)ADMIN_GUESS_BURST);
	/* A second later, one token is checked again. */
	assert_int_equal(admin_auth_check_token(auth, TOKEN, now + 1.0), ADMIN_TOKEN_RIGHT);
	assert_int_equal(admin_auth_check_token(auth, "guess", now + 1.0), ADMIN_TOKEN_WRONG);
	assert_int_equal(admin_auth_check_token(auth, TOKEN, now + 1.0), ADMIN_TOKEN_NOT_CHECKED);
	/* Refilled to the burst, not beyond it. */
	now += 1000;
	for (int i = 0; i < (int)ADMIN_GUESS_BURST; i++)
		assert_int_equal(admin_auth_check_token(auth, "guess", now), ADMIN_TOKEN_WRONG);
	assert_int_equal(admin_auth_check_token(auth, TOKEN, now), ADMIN_TOKEN_NOT_CHECKED);
	/* A clock that goes back refills nothing. */
	assert_int_equal(admin_auth_check_token(auth, TOKEN, now - 100), ADMIN_TOKEN_NOT_CHECKED);
	free(auth);
}

static void test_same_origin(void **state)
{
	(void)state;
	const char *host = "127.0.0.1:9330";
	assert_true(admin_auth_same_origin("http://127.0.0.1:9330", NULL, host));
	assert_true(admin_auth_same_origin("https://127.0.0.1:9330", NULL, host));
	assert_true(admin_auth_same_origin("HTTP://LOCALHOST:9330", NULL, "localhost:9330"));
	assert_false(admin_auth_same_origin("http://evil.example", NULL, host));
	assert_false(admin_auth_same_origin("http://127.0.0.1:9331", NULL, host));
	assert_false(admin_auth_same_origin("http://127.0.0.1:9330.evil.example", NULL, host));
	assert_false(admin_auth_same_origin("ftp://127.0.0.1:9330", NULL, host));
	assert_false(admin_auth_same_origin("null", NULL, host));
	assert_false(admin_auth_same_origin("", NULL, host));
	/* An Origin with no Host to compare it to. */
	assert_false(admin_auth_same_origin("http://127.0.0.1:9330", NULL, NULL));
	assert_false(admin_auth_same_origin("http://", NULL, ""));
	/* Sec-Fetch-Site. */
	assert_false(admin_auth_same_origin(NULL, "cross-site", host));
	assert_false(admin_auth_same_origin(NULL, "same-site", host));
	assert_false(admin_auth_same_origin(NULL, "Cross-Site", host));
	assert_true(admin_auth_same_origin(NULL, "same-origin", host));
	assert_true(admin_auth_same_origin(NULL, "none", host));
	assert_false(admin_auth_same_origin("http://127.0.0.1:9330", "cross-site", host));
	assert_true(admin_auth_same_origin("http://127.0.0.1:9330", "same-origin", host));
	/* Neither header: a script, not a browser. */
	assert_true(admin_auth_same_origin(NULL, NULL, host));
	assert_true(admin_auth_same_origin(NULL, NULL, NULL));
}

static void test_host_is_address(void **state)
{
	(void)state;
	assert_true(admin_auth_host_is_address("127.0.0.1:9330"));
	assert_true(admin_auth_host_is_address("127.0.0.1"));
	assert_true(admin_auth_host_is_address("[::1]:9330"));
	assert_true(admin_auth_host_is_address("[::1]"));
	assert_true(admin_auth_host_is_address("localhost"));
	assert_true(admin_auth_host_is_address("LOCALHOST:1"));
	assert_true(admin_auth_host_is_address("10.1.2.3:80"));
	assert_false(admin_auth_host_is_address("evil.example"));
	assert_false(admin_auth_host_is_address("evil.example:9330"));
	assert_false(admin_auth_host_is_address("127.0.0.1.evil.example"));
	assert_false(admin_auth_host_is_address("localhost.evil.example"));
	assert_false(admin_auth_host_is_address("[::1"));
	assert_false(admin_auth_host_is_address("[::1]x"));
	assert_false(admin_auth_host_is_address("[evil.example]"));
	assert_false(admin_auth_host_is_address("::1"));
	assert_false(admin_auth_host_is_address(""));
	assert_false(admin_auth_host_is_address(NULL));
	char long_host[400];
	memset(long_host, '1', sizeof long_host - 1);
	long_host[sizeof long_host - 1] = '\0';
	assert_false(admin_auth_host_is_address(long_host));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_token_file),
		cmocka_unit_test(test_cookie_parsing),
		cmocka_unit_test(test_session_expires_and_closes),
		cmocka_unit_test(test_sessions_evict_the_oldest),
		cmocka_unit_test(test_check_token),
		cmocka_unit_test(test_guessing_credit),
		cmocka_unit_test(test_same_origin),
		cmocka_unit_test(test_host_is_address),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
