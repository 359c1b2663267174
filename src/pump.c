/*
 * pump.c - the buffered pump: recv into a fixed buffer, send it out.
 */
#include "portrelay/pump.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/*
 * Reads per call before yielding to other connections. 16 x 64 KiB = 1 MiB
 * per turn keeps bulk transfers efficient without starving small ones.
 */
#define PUMP_READS_PER_TURN 16

void pump_init(struct pump *pump)
{
	memset(pump, 0, sizeof *pump);
}

size_t pump_pending(const struct pump *pump)
{
	return pump->end - pump->start;
}

void pump_release(struct pump *pump)
{
	free(pump->buffer);
	pump->buffer = NULL;
	pump->start = pump->end = 0;
}

static enum pump_status pump_fail(struct pump *pump, int error, int at_dest)
{
	pump->error = error;
	pump->error_at_dest = (unsigned char)at_dest;
	return PUMP_ERROR;
}

/* Writes what is buffered. Returns PUMP_WANT_READ once the buffer is empty. */
static enum pump_status pump_flush(struct pump *pump, int dest_fd)
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
	pump->start = pump->end = 0;
	return PUMP_WANT_READ;
}

enum pump_status pump_run(struct pump *pump, int source_fd, int dest_fd)
{
	for (int reads = 0; reads < PUMP_READS_PER_TURN; reads++) {
		enum pump_status status = pump_flush(pump, dest_fd);
		if (status != PUMP_WANT_READ)
			return status;
		if (pump->source_eof) {
			pump_release(pump);
			return PUMP_DONE;
		}
		if (pump->buffer == NULL) {
			pump->buffer = malloc(PUMP_BUFFER_SIZE);
			if (pump->buffer == NULL)
				return pump_fail(pump, ENOMEM, 0);
		}
		ssize_t received = recv(source_fd, pump->buffer, PUMP_BUFFER_SIZE, 0);
		if (received > 0) {
			pump->end = (uint32_t)received;
		} else if (received == 0) {
			pump->source_eof = 1;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			/* Nothing in flight: give the memory back while idle. */
			pump_release(pump);
			return PUMP_WANT_READ;
		} else if (errno != EINTR) {
			return pump_fail(pump, errno, 0);
		}
	}
	/* Fair share done; flush what the last read brought, then yield. */
	enum pump_status status = pump_flush(pump, dest_fd);
	if (status == PUMP_WANT_READ && pump->source_eof) {
		pump_release(pump);
		return PUMP_DONE;
	}
	return status;
}
