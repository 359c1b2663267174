/*
 * acl.h - a forward's source rules (allow / deny lists of CIDR networks) and
 * the identity of a client "source" for per-source limits.
 *
 * Pure: no sockets, no allocation, no logging. The configuration parses the
 * rules into a struct acl stored inline in struct forward (so a forward
 * stays copyable with memcpy); the relay asks acl_allows for each accepted
 * connection and each new UDP flow.
 *
 * Semantics: the entries are checked in order and the first one whose
 * network contains the client decides (allow or deny); a client that no
 * entry contains is allowed. The configuration keeps the order in which the
 * entries appear in the file, so `allow = [...]; deny = ["0.0.0.0/0",
 * "::/0"];` admits only the allowed networks.
 *
 * IPv4 clients that reach a dual-stack ("::") socket arrive as IPv4-mapped
 * IPv6 addresses (::ffff:192.0.2.1): they are matched as the IPv4 address
 * they are, against IPv4 entries only. So "::/0" matches every IPv6 client
 * but no IPv4 one, and "0.0.0.0/0" every IPv4 client, mapped or not. An
 * entry written as a mapped network ("::ffff:10.0.0.0/104") is stored as
 * the IPv4 network it names (10.0.0.0/8).
 */
#ifndef PORTRELAY_ACL_H
#define PORTRELAY_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Entries of allow and deny together, per forward. */
#define ACL_MAX_ENTRIES 64

/* Enough for "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128". */
#define ACL_ENTRY_STRLEN 56

struct acl_entry {
	uint8_t family;        /* AF_INET or AF_INET6 */
	uint8_t prefix_len;    /* 0-32 for AF_INET, 0-128 for AF_INET6 */
	bool allow;            /* what a match decides */
	/* The network, host bits zero; an IPv4 network in the first 4 bytes. */
	uint8_t addr[16];
};

struct acl {
	unsigned count;        /* 0: no rule, every client is allowed */
	struct acl_entry entries[ACL_MAX_ENTRIES];
};

/*
 * Parses one entry: "192.168.0.0/16", "2001:db8::/32", or a bare address
 * (a /32 or /128). Host bits beyond the prefix are an error (the reason
 * suggests the network: "10.0.0.1/8: host bits set; did you mean
 * 10.0.0.0/8?"), so is a prefix length outside 0-32 / 0-128 or anything
 * that is not a numeric address. On error returns -1 and writes why (which
 * starts with the text as written); never logs.
 */
int acl_entry_parse(const char *text, bool allow, struct acl_entry *out, char *why,
		    size_t why_len);

/* Appends entry; -1 when the list already holds ACL_MAX_ENTRIES. */
int acl_append(struct acl *acl, const struct acl_entry *entry);

/*
 * The index of the first entry containing client (AF_INET or AF_INET6,
 * mapped addresses matched as IPv4), or -1 when none does or the family is
 * neither. Allocates nothing; at most ACL_MAX_ENTRIES short comparisons.
 */
int acl_match(const struct acl *acl, const struct sockaddr *client);

/* Whether acl admits client: the first matching entry decides, default allow. */
bool acl_allows(const struct acl *acl, const struct sockaddr *client);

/* "10.0.0.0/8", "2001:db8::/32"; returns buf. */
const char *acl_entry_format(const struct acl_entry *entry, char *buf, size_t buf_len);

/* Two lists with the same entries in the same order. */
bool acl_equal(const struct acl *a, const struct acl *b);

/*
 * The "source" of a client for per-source limits (max_connections_per_source,
 * max_flows_per_source), as 16 bytes to compare or hash:
 *  - IPv4, plain or mapped: the address, as ::ffff:a.b.c.d;
 *  - IPv6: its /64 (the last 8 bytes zero), since one host or site
 *    usually holds a whole /64 and can pick any address in it;
 *  - IPv6 link-local (fe80::/10): the whole address, since every link
 *    shares the prefix fe80::/64 (the scope is not part of the key).
 * The three kinds can never share a key. Returns 0, or -1 (key zeroed) for
 * another family.
 */
#define ACL_SOURCE_KEY_LEN 16
int acl_source_key(const struct sockaddr *client, uint8_t key[ACL_SOURCE_KEY_LEN]);

#endif
