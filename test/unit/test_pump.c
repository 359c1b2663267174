/*
 * test_pump.c - one direction of a TCP session over real loopback sockets:
 * buffered and zero-copy (splice) pumps, EOF, back-pressure bound, pipe pool.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "portrelay/pump.h"

/* A connected non-blocking TCP pair on 127.0.0.1: fds[0] writes to fds[1]. */
static void tcp_pair(int fds[2])
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof addr;
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(listener >= 0);
	assert_int_equal(bind(listener, (struct sockaddr *)&addr, sizeof addr), 0);
	assert_int_equal(listen(listener, 1), 0);
	assert_int_equal(getsockname(listener, (struct sockaddr *)&addr, &len), 0);
	fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	assert_true(fds[0] >= 0);
	int rc = connect(fds[0], (struct sockaddr *)&addr, sizeof addr);
	assert_true(rc == 0 || errno == EINPROGRESS);
	fds[1] = accept4(listener, NULL, NULL, SOCK_NONBLOCK);
	assert_true(fds[1] >= 0);
	close(listener);
}

struct rig {
	int source[2];   /* test writes source[0]; the pump reads source[1] */
	int dest[2];     /* the pump writes dest[0]; the test reads dest[1] */
	struct pump_pool pool;        /* splicing allowed */
	struct pump_pool copy_pool;   /* no pipes: always copied */
};

static int rig_setup(void **state)
{
	struct rig *rig = calloc(1, sizeof *rig);
	tcp_pair(rig->source);
	tcp_pair(rig->dest);
	assert_int_equal(pump_pool_init(&rig->pool, 4), 0);
	assert_int_equal(pump_pool_init(&rig->copy_pool, 0), 0);
	*state = rig;
	return 0;
}

static int rig_teardown(void **state)
{
	struct rig *rig = *state;
	for (int i = 0; i < 2; i++) {
		close(rig->source[i]);
		close(rig->dest[i]);
	}
	pump_pool_destroy(&rig->pool);
	pump_pool_destroy(&rig->copy_pool);
	free(rig);
	return 0;
}

static unsigned char pattern_byte(size_t i)
{
	return (unsigned char)((i * 2654435761u) >> 13);
}

/*
 * Sends `total` patterned bytes and EOF through the pump and checks that
 * exactly those bytes arrive, then EOF. Bounded by an iteration count.
 */
static void move_and_check(struct rig *rig, struct pump *pump, size_t total)
{
	/* Sends of a whole read's size, so that bursts fill reads and go bulk. */
	static unsigned char chunk[PUMP_BUFFER_SIZE];
	size_t sent = 0, received = 0;
	bool source_shut = false, done = false, dest_eof = false;

	for (int round = 0; round < 200000 && !(done && dest_eof); round++) {
		if (sent < total) {
			size_t n = total - sent < sizeof chunk ? total - sent : sizeof chunk;
			for (size_t i = 0; i < n; i++)
				chunk[i] = pattern_byte(sent + i);
			ssize_t w = send(rig->source[0], chunk, n, MSG_NOSIGNAL);
			if (w > 0)
				sent += (size_t)w;
		} else if (!source_shut) {
			shutdown(rig->source[0], SHUT_WR);
			source_shut = true;
		}
		if (!done) {
			enum pump_status status = pump_run(pump, rig->source[1], rig->dest[0]);
			assert_int_not_equal(status, PUMP_ERROR);
			if (status == PUMP_DONE) {
				done = true;
				shutdown(rig->dest[0], SHUT_WR);
			}
		}
		ssize_t r;
		while ((r = recv(rig->dest[1], chunk, sizeof chunk, 0)) > 0) {
			for (ssize_t i = 0; i < r; i++)
				assert_int_equal(chunk[i], pattern_byte(received + (size_t)i));
			received += (size_t)r;
		}
		if (r == 0)
			dest_eof = true;
		else if (!(done && dest_eof))
			poll(NULL, 0, 0);
	}
	assert_true(done);
	assert_true(dest_eof);
	assert_int_equal(received, total);
	assert_int_equal(pump->bytes, total);
	assert_int_equal(pump_pending(pump), 0);
}

static void test_buffered_pump_delivers_every_byte_then_eof(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	pump_init(&pump, &rig->copy_pool);
	move_and_check(rig, &pump, 3 * 1024 * 1024 + 17);
	pump_release(&pump);
}

static void test_splice_pump_delivers_every_byte_then_eof(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	pump_init(&pump, &rig->pool);
	move_and_check(rig, &pump, 3 * 1024 * 1024 + 17);
	assert_int_equal(rig->pool.fallbacks, 0);
	assert_false(rig->pool.splice_unsupported);
	/* Bulk went through a pipe, which is back in the pool, empty. */
	assert_int_equal(rig->pool.in_use, 0);
	assert_int_equal(rig->pool.idle_count, 1);
	pump_release(&pump);
}

static void test_exhausted_pool_falls_back_to_the_buffer(void **state)
{
	struct rig *rig = *state;
	struct pump_pool empty_pool;
	pump_pool_init(&empty_pool, 0);
	struct pump pump;
	pump_init(&pump, &empty_pool);
	move_and_check(rig, &pump, 1024 * 1024);
	assert_true(empty_pool.fallbacks > 0);
	pump_release(&pump);
	pump_pool_destroy(&empty_pool);
}

/* Bytes waiting to be read on fd. */
static int readable_bytes(int fd)
{
	int queued = -1;
	assert_int_equal(ioctl(fd, FIONREAD, &queued), 0);
	return queued;
}

/*
 * A destination that does not read: the pump stops with a bounded backlog,
 * and once stopped it reads nothing more from the source, however often it
 * runs (the relay's memory cannot grow with what the sender offers).
 */
static void fill_until_blocked(struct rig *rig, struct pump *pump, size_t *pending_max)
{
	static unsigned char chunk[65536];
	enum pump_status status = PUMP_WANT_READ;
	*pending_max = 0;
	for (int round = 0; round < 10000 && status != PUMP_WANT_WRITE; round++) {
		/* Keep the source full: one long burst, as a bulk sender makes. */
		while (send(rig->source[0], chunk, sizeof chunk, MSG_NOSIGNAL) > 0)
			;
		status = pump_run(pump, rig->source[1], rig->dest[0]);
		assert_int_not_equal(status, PUMP_ERROR);
		if (pump_pending(pump) > *pending_max)
			*pending_max = pump_pending(pump);
	}
	assert_int_equal(status, PUMP_WANT_WRITE);

	int waiting = readable_bytes(rig->source[1]);
	size_t pending = pump_pending(pump);
	assert_true(waiting > 0);
	for (int again = 0; again < 10; again++)
		assert_int_equal(pump_run(pump, rig->source[1], rig->dest[0]), PUMP_WANT_WRITE);
	assert_int_equal(readable_bytes(rig->source[1]), waiting);
	assert_int_equal(pump_pending(pump), pending);
}

static void test_full_destination_stops_the_buffered_pump_within_its_bound(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	size_t pending_max;
	pump_init(&pump, &rig->copy_pool);
	fill_until_blocked(rig, &pump, &pending_max);
	assert_true(pending_max > 0);
	assert_true(pending_max <= PUMP_BUFFER_SIZE);
	pump_release(&pump);
}

static void test_full_destination_stops_the_splice_pump_within_its_bound(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	size_t pending_max;
	pump_init(&pump, &rig->pool);
	fill_until_blocked(rig, &pump, &pending_max);
	assert_true(pending_max > 0);
	assert_true(pending_max <= PUMP_PIPE_SIZE);
	assert_int_equal(rig->pool.in_use, 1);
	pump_release(&pump);
	/* A pipe released with bytes in it is closed, not pooled. */
	assert_int_equal(rig->pool.in_use, 0);
	assert_int_equal(rig->pool.idle_count, 0);
}

/* Small messages are copied: no pipe, no per-connection buffer. */
static void test_small_message_is_copied_without_a_pipe(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	char got[8] = { 0 };
	pump_init(&pump, &rig->pool);
	assert_int_equal(send(rig->source[0], "hello", 5, 0), 5);
	for (int round = 0; round < 1000 && pump.bytes < 5; round++) {
		assert_int_equal(pump_run(&pump, rig->source[1], rig->dest[0]), PUMP_WANT_READ);
		poll(NULL, 0, 1);
	}
	assert_int_equal(pump.bytes, 5);
	assert_null(pump.buffer);
	assert_int_equal(rig->pool.in_use + rig->pool.idle_count, 0);
	for (int round = 0; round < 1000 && recv(rig->dest[1], got, 5, MSG_PEEK) < 5; round++)
		poll(NULL, 0, 1);
	assert_int_equal(recv(rig->dest[1], got, sizeof got, 0), 5);
	assert_memory_equal(got, "hello", 5);
	pump_release(&pump);
}

static void test_idle_pump_returns_its_pipe_and_trim_closes_it(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	static unsigned char burst[4 * PUMP_BUFFER_SIZE];
	unsigned char sink[PUMP_BUFFER_SIZE];
	pump_init(&pump, &rig->pool);
	assert_int_equal(send(rig->source[0], burst, sizeof burst, 0), (ssize_t)sizeof burst);
	enum pump_status status = PUMP_WANT_READ;
	for (int round = 0; round < 10000 && pump.bytes < sizeof burst; round++) {
		status = pump_run(&pump, rig->source[1], rig->dest[0]);
		while (recv(rig->dest[1], sink, sizeof sink, 0) > 0)
			;
	}
	assert_int_equal(pump.bytes, sizeof burst);
	/* One more turn finds the source empty: the burst is over. */
	status = pump_run(&pump, rig->source[1], rig->dest[0]);
	assert_int_equal(status, PUMP_WANT_READ);
	assert_false(pump.bulk);
	assert_int_equal(rig->pool.in_use, 0);
	assert_int_equal(rig->pool.idle_count, 1);
	pump_pool_trim(&rig->pool);
	assert_int_equal(rig->pool.idle_count, 0);
	pump_release(&pump);
}

static void test_reset_by_the_source_is_an_error_at_the_source(void **state)
{
	struct rig *rig = *state;
	struct pump pump;
	pump_init(&pump, &rig->pool);
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };
	assert_int_equal(send(rig->source[0], "x", 1, 0), 1);
	setsockopt(rig->source[0], SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
	close(rig->source[0]);
	enum pump_status status = PUMP_WANT_READ;
	for (int round = 0; round < 1000 && status != PUMP_ERROR; round++) {
		status = pump_run(&pump, rig->source[1], rig->dest[0]);
		poll(NULL, 0, 1);
	}
	assert_int_equal(status, PUMP_ERROR);
	assert_int_equal(pump.error, ECONNRESET);
	assert_false(pump.error_at_dest);
	pump_release(&pump);
	rig->source[0] = socket(AF_INET, SOCK_STREAM, 0);   /* for teardown */
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, rig_setup, rig_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TEST(test_buffered_pump_delivers_every_byte_then_eof),
		TEST(test_splice_pump_delivers_every_byte_then_eof),
		TEST(test_exhausted_pool_falls_back_to_the_buffer),
		TEST(test_full_destination_stops_the_buffered_pump_within_its_bound),
		TEST(test_full_destination_stops_the_splice_pump_within_its_bound),
		TEST(test_small_message_is_copied_without_a_pipe),
		TEST(test_idle_pump_returns_its_pipe_and_trim_closes_it),
		TEST(test_reset_by_the_source_is_an_error_at_the_source),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
