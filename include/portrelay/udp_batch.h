/*
 * udp_batch.h - datagrams in batches: recvmmsg into fixed buffers, sendmmsg
 * out of them. One batch per worker, reused for every socket; nothing is
 * allocated per datagram.
 */
#ifndef PORTRELAY_UDP_BATCH_H
#define PORTRELAY_UDP_BATCH_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "portrelay/net.h"

/* Datagrams per system call. */
#define UDP_BATCH 32
/*
 * One buffer per datagram, larger than the largest UDP payload (65,507
 * bytes over IPv4; 65,527 over IPv6): a datagram that does not fit is
 * reported truncated (MSG_TRUNC) and dropped, never forwarded cut. Only the
 * pages a datagram touches become resident.
 */
#define UDP_BUFFER_SIZE 65536

/* Room for the destination address of a datagram (IP_PKTINFO / IPV6_PKTINFO). */
union udp_control {
	char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
	struct cmsghdr align;
};

struct udp_batch {
	struct mmsghdr in[UDP_BATCH];
	struct iovec in_iov[UDP_BATCH];
	union net_sockaddr from[UDP_BATCH];
	union udp_control control[UDP_BATCH];
	struct mmsghdr out[UDP_BATCH];
	struct iovec out_iov[UDP_BATCH][2];   /* [1]: the datagram after a prefix */
	unsigned char *buffers;   /* UDP_BATCH * UDP_BUFFER_SIZE */
};

int udp_batch_init(struct udp_batch *batch);
void udp_batch_free(struct udp_batch *batch);

/*
 * Receives datagrams from fd into slots first..UDP_BATCH-1 (with source
 * addresses, and destination addresses when want_control). Returns how
 * many, or -1 with errno (EAGAIN when there is nothing).
 */
int udp_batch_receive(struct udp_batch *batch, unsigned first, int fd, bool want_control);

static inline unsigned char *udp_batch_data(struct udp_batch *batch, unsigned i)
{
	return batch->buffers + (size_t)i * UDP_BUFFER_SIZE;
}

static inline bool udp_batch_truncated(const struct udp_batch *batch, unsigned i)
{
	return (batch->in[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
}

/*
 * Prepares out[slot] to carry received datagram i (no address, no control).
 * The data stays in datagram i's buffer until sent: the caller must not
 * receive into slot i again before then.
 */
void udp_batch_queue(struct udp_batch *batch, unsigned slot, unsigned i);

/*
 * The same, with `prefix` (len bytes) sent in front of the datagram, in
 * the same datagram (a PROXY header); prefix must live until the send.
 */
void udp_batch_queue_prefixed(struct udp_batch *batch, unsigned slot, unsigned i,
			      const void *prefix, size_t len);

/*
 * Sends out[first..first+count) on fd. A message the kernel refuses (too big, ...) is
 * skipped; a full socket buffer drops the rest, since UDP has no
 * back-pressure. A pending ICMP error reported instead of sending is
 * cleared and the send retried once; *refused counts it. Returns how many
 * were sent.
 */
unsigned udp_batch_send(struct udp_batch *batch, int fd, unsigned first, unsigned count,
			uint64_t *refused);

#endif
