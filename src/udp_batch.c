/*
 * udp_batch.c - recvmmsg/sendmmsg with fixed buffers.
 */
#include "portrelay/udp_batch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int udp_batch_init(struct udp_batch *batch)
{
	memset(batch, 0, sizeof *batch);
	/* malloc, not calloc: pages stay unmapped until a datagram lands in them. */
	batch->buffers = malloc((size_t)UDP_BATCH * UDP_BUFFER_SIZE);
	return batch->buffers != NULL ? 0 : -1;
}

void udp_batch_free(struct udp_batch *batch)
{
	free(batch->buffers);
	batch->buffers = NULL;
}

int udp_batch_receive(struct udp_batch *batch, unsigned first, int fd, bool want_control)
{
	for (unsigned i = first; i < UDP_BATCH; i++) {
		struct msghdr *hdr = &batch->in[i].msg_hdr;
		batch->in_iov[i].iov_base = udp_batch_data(batch, i);
		batch->in_iov[i].iov_len = UDP_BUFFER_SIZE;
		hdr->msg_name = &batch->from[i];
		hdr->msg_namelen = sizeof batch->from[i];
		hdr->msg_iov = &batch->in_iov[i];
		hdr->msg_iovlen = 1;
		hdr->msg_control = want_control ? batch->control[i].buf : NULL;
		hdr->msg_controllen = want_control ? sizeof batch->control[i].buf : 0;
		hdr->msg_flags = 0;
	}
	int received;
	do
		received = recvmmsg(fd, batch->in + first, UDP_BATCH - first, MSG_DONTWAIT, NULL);
	while (received < 0 && errno == EINTR);
	return received;
}

void udp_batch_queue(struct udp_batch *batch, unsigned slot, unsigned i)
{
	batch->out_iov[slot][0].iov_base = udp_batch_data(batch, i);
	batch->out_iov[slot][0].iov_len = batch->in[i].msg_len;
	memset(&batch->out[slot], 0, sizeof batch->out[slot]);
	batch->out[slot].msg_hdr.msg_iov = batch->out_iov[slot];
	batch->out[slot].msg_hdr.msg_iovlen = 1;
}

void udp_batch_queue_prefixed(struct udp_batch *batch, unsigned slot, unsigned i,
			      const void *prefix, size_t len)
{
	udp_batch_queue(batch, slot, i);
	batch->out_iov[slot][1] = batch->out_iov[slot][0];
	batch->out_iov[slot][0].iov_base = (void *)prefix;
	batch->out_iov[slot][0].iov_len = len;
	batch->out[slot].msg_hdr.msg_iovlen = 2;
}

unsigned udp_batch_send(struct udp_batch *batch, int fd, unsigned first, unsigned count,
			uint64_t *refused)
{
	unsigned sent = 0, next = first;
	count += first;
	bool retried = false;
	while (next < count) {
		int done = sendmmsg(fd, batch->out + next, count - next, MSG_DONTWAIT);
		if (done > 0) {
			sent += (unsigned)done;
			next += (unsigned)done;
		} else if (done < 0 && errno == EINTR) {
			continue;
		} else if (done < 0 && errno == ECONNREFUSED) {
			/* Once: the pending error is cleared, try again; twice: skip that one. */
			(*refused)++;
			if (retried)
				next++;
			retried = true;
		} else if (done < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
			break;
		} else {
			next++;   /* this one cannot go (EMSGSIZE, ...): skip it */
		}
	}
	return sent;
}
