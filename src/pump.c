/*
 * pump.c - one direction of a TCP session: zero-copy through a pipe when it
 * can, through a userspace buffer otherwise.
 */
#include "portrelay/pump.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * Reads per call before yielding to other connections. 16 x 64 KiB = 1 MiB
 * per turn keeps bulk transfers efficient without starving small ones.
 */
#define PUMP_READS_PER_TURN 16
/* Idle pipes kept open for the next transfer; more are closed. */
#define PIPE_POOL_IDLE_MAX 64

/* ---- the pool ------------------------------------------------------------ */

int pump_pool_init(struct pump_pool *pool, unsigned max_pipes)
{
	memset(pool, 0, sizeof *pool);
	pool->max_in_use = max_pipes;
	pool->idle_max = PIPE_POOL_IDLE_MAX;
	pool->idle = calloc(pool->idle_max, sizeof *pool->idle);
	pool->scratch = malloc(PUMP_BUFFER_SIZE);
	return pool->idle != NULL && pool->scratch != NULL ? 0 : -1;
}

void pump_pool_trim(struct pump_pool *pool)
{
	for (unsigned i = 0; i < pool->idle_count; i++) {
		close(pool->idle[i][0]);
		close(pool->idle[i][1]);
	}
	pool->idle_count = 0;
}

void pump_pool_destroy(struct pump_pool *pool)
{
	pump_pool_trim(pool);
	free(pool->idle);
	free(pool->scratch);
	memset(pool, 0, sizeof *pool);
}

static int pipe_pool_get(struct pump_pool *pool, int fds[2])
{
	if (pool->splice_unsupported || pool->in_use >= pool->max_in_use)
		return -1;
	if (pool->idle_count > 0) {
		pool->idle_count--;
		fds[0] = pool->idle[pool->idle_count][0];
		fds[1] = pool->idle[pool->idle_count][1];
	} else if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
		return -1;   /* EMFILE and the like: the buffered path still works */
	}
	pool->in_use++;
	return 0;
}

/* An empty pipe goes back to the pool; one with bytes left in it is closed. */
static void pipe_pool_put(struct pump_pool *pool, int fds[2], bool empty)
{
	pool->in_use--;
	if (empty && pool->idle_count < pool->idle_max) {
		pool->idle[pool->idle_count][0] = fds[0];
		pool->idle[pool->idle_count][1] = fds[1];
		pool->idle_count++;
	} else {
		close(fds[0]);
		close(fds[1]);
	}
	fds[0] = fds[1] = -1;
}

/* ---- common -------------------------------------------------------------- */

void pump_init(struct pump *pump, struct pump_pool *pool)
{
	memset(pump, 0, sizeof *pump);
	pump->pool = pool;
	pump->pipe[0] = pump->pipe[1] = -1;
}

size_t pump_pending(const struct pump *pump)
{
	return (size_t)(pump->end - pump->start) + pump->pipe_bytes;
}

static void pump_release_buffer(struct pump *pump)
{
	free(pump->buffer);
	pump->buffer = NULL;
	pump->start = pump->end = 0;
}

static void pump_release_pipe(struct pump *pump)
{
	if (pump->pipe[0] >= 0)
		pipe_pool_put(pump->pool, pump->pipe, pump->pipe_bytes == 0);
	pump->pipe_bytes = 0;
}

void pump_release(struct pump *pump)
{
	pump_release_buffer(pump);
	pump_release_pipe(pump);
}

static enum pump_status pump_fail(struct pump *pump, int error, int at_dest)
{
	pump->error = error;
	pump->error_at_dest = (unsigned char)at_dest;
	return PUMP_ERROR;
}

/* ---- buffered ------------------------------------------------------------ */

/* Writes what is buffered. Returns PUMP_WANT_READ once the buffer is empty. */
static enum pump_status pump_flush_buffer(struct pump *pump, int dest_fd)
{
	while (pump->end > pump->start) {
		ssize_t sent = send(dest_fd, pump->buffer + pump->start, pump->end - pump->start,
				    MSG_NOSIGNAL);
		if (sent < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return PUMP_WANT_WRITE;
			if (errno == EINTR)
				continue;
			return pump_fail(pump, errno, 1);
		}
		pump->start += (uint32_t)sent;
		pump->bytes += (uint64_t)sent;
	}
	pump_release_buffer(pump);   /* drained: an idle connection holds no memory */
	return PUMP_WANT_READ;
}

/* Keeps what the destination did not take, for the next writable turn. */
static enum pump_status pump_keep(struct pump *pump, const char *data, size_t len)
{
	if (pump->buffer == NULL) {
		pump->buffer = malloc(PUMP_BUFFER_SIZE);
		if (pump->buffer == NULL)
			return pump_fail(pump, ENOMEM, 0);
	}
	memmove(pump->buffer, data, len);
	pump->start = 0;
	pump->end = (uint32_t)len;
	return PUMP_WANT_WRITE;
}

int pump_preload(struct pump *pump, const void *data, size_t len)
{
	if (len > PUMP_BUFFER_SIZE || pump->buffer != NULL)
		return -1;
	return pump_keep(pump, data, len) == PUMP_ERROR ? -1 : 0;
}

/*
 * One copied read, sent on at once: recv into the shared scratch buffer and
 * send; only a remainder the destination cannot take is kept. Returns
 * PUMP_WANT_READ to go on (data moved, or EOF seen).
 */
static enum pump_status pump_copy(struct pump *pump, int source_fd, int dest_fd,
				  bool *would_block)
{
	char *scratch = pump->pool->scratch;
	ssize_t received;
	do
		received = recv(source_fd, scratch, PUMP_BUFFER_SIZE, 0);
	while (received < 0 && errno == EINTR);
	if (received == 0) {
		pump->source_eof = 1;
		return PUMP_WANT_READ;
	}
	if (received < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return pump_fail(pump, errno, 0);
		*would_block = true;
		return PUMP_WANT_READ;
	}
	/* A full read means more is queued: the rest of the burst is bulk. */
	if (received == PUMP_BUFFER_SIZE)
		pump->bulk = 1;

	size_t sent = 0;
	while (sent < (size_t)received) {
		ssize_t n = send(dest_fd, scratch + sent, (size_t)received - sent, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return pump_fail(pump, errno, 1);
			break;
		}
		sent += (size_t)n;
	}
	pump->bytes += sent;
	if (sent < (size_t)received)
		return pump_keep(pump, scratch + sent, (size_t)received - sent);
	/*
	 * A short read emptied the socket: asking again would only return
	 * EAGAIN. Anything arriving later makes the socket readable again.
	 */
	if (received < PUMP_BUFFER_SIZE)
		*would_block = true;
	return PUMP_WANT_READ;
}

/* ---- zero-copy ----------------------------------------------------------- */

static enum pump_status pump_flush_pipe(struct pump *pump, int dest_fd)
{
	while (pump->pipe_bytes > 0) {
		ssize_t moved = splice(pump->pipe[0], NULL, dest_fd, NULL, pump->pipe_bytes,
				       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (moved < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return PUMP_WANT_WRITE;
			if (errno == EINTR)
				continue;
			return pump_fail(pump, errno, 1);
		}
		pump->pipe_bytes -= (uint32_t)moved;
		pump->bytes += (uint64_t)moved;
	}
	return PUMP_WANT_READ;
}

/*
 * One splice from the socket into the (empty) pipe. Returns -1 when this
 * read must be done buffered instead (no pipe, or splice unsupported).
 */
static int pump_read_pipe(struct pump *pump, int source_fd, bool *would_block,
			  enum pump_status *status)
{
	if (pump->pipe[0] < 0 && pipe_pool_get(pump->pool, pump->pipe) < 0) {
		pump->pool->fallbacks++;
		return -1;
	}
	for (;;) {
		/* The pipe is empty, so EAGAIN can only mean the socket is. */
		ssize_t moved = splice(source_fd, NULL, pump->pipe[1], NULL, PUMP_PIPE_SIZE,
				       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (moved > 0) {
			pump->pipe_bytes = (uint32_t)moved;
		} else if (moved == 0) {
			pump->source_eof = 1;
			pump_release_pipe(pump);
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			/*
			 * The burst is over: the pipe goes back to the pool for another
			 * session, and the next burst starts out copied.
			 */
			pump_release_pipe(pump);
			pump->bulk = 0;
			*would_block = true;
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EINVAL || errno == ENOSYS) {
			/* A socket type or kernel that cannot splice: buffered from now on. */
			pump->pool->splice_unsupported = true;
			pump_release_pipe(pump);
			return -1;
		} else {
			*status = pump_fail(pump, errno, 0);
		}
		return 0;
	}
}

/* ---- the loop ------------------------------------------------------------ */

static enum pump_status pump_flush(struct pump *pump, int dest_fd)
{
	enum pump_status status = pump_flush_pipe(pump, dest_fd);
	if (status != PUMP_WANT_READ)
		return status;
	return pump_flush_buffer(pump, dest_fd);
}

enum pump_status pump_run(struct pump *pump, int source_fd, int dest_fd)
{
	for (int reads = 0; reads <= PUMP_READS_PER_TURN; reads++) {
		enum pump_status status = pump_flush(pump, dest_fd);
		if (status != PUMP_WANT_READ)
			return status;
		if (pump->source_eof) {
			pump_release(pump);
			return PUMP_DONE;
		}
		/*
		 * Fair share done, and nothing is left in flight: yield, and give
		 * the (empty) pipe back, in case the burst just ended with it.
		 */
		if (reads == PUMP_READS_PER_TURN) {
			pump_release_pipe(pump);
			break;
		}

		bool would_block = false;
		status = PUMP_WANT_READ;
		if (!pump->bulk || pump_read_pipe(pump, source_fd, &would_block, &status) < 0)
			status = pump_copy(pump, source_fd, dest_fd, &would_block);
		if (status != PUMP_WANT_READ || would_block)
			return status;
	}
	return PUMP_WANT_READ;
}
