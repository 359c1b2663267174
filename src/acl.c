/*
 * acl.c - source rules: parsing CIDR entries, matching a client address
 * (first match wins, default allow), and the per-source key.
 */
#include "portrelay/acl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* The longest text worth trying: a bracketed IPv6 address, '/', 3 digits. */
#define ACL_TEXT_MAX (INET6_ADDRSTRLEN + 8)

/* Whether the bits of addr past prefix_len (of total_bits) are all zero. */
static bool acl_host_bits_clear(const uint8_t *addr, unsigned prefix_len, unsigned total_bits)
{
	for (unsigned bit = prefix_len; bit < total_bits; bit++) {
		if (addr[bit / 8] & (0x80u >> (bit % 8)))
			return false;
	}
	return true;
}

/* Zeroes the bits of addr past prefix_len. */
static void acl_clear_host_bits(uint8_t *addr, unsigned prefix_len, unsigned total_bytes)
{
	for (unsigned byte = prefix_len / 8; byte < total_bytes; byte++) {
		unsigned keep = byte == prefix_len / 8 ? prefix_len % 8 : 0;
		addr[byte] &= (uint8_t)(0xff00u >> keep);
	}
}

/* Digits only, no sign: 0-999, else -1. */
static int acl_prefix_number(const char *text)
{
	int value = 0;

	if (text[0] == '\0' || strlen(text) > 3)
		return -1;
	for (const char *p = text; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		value = value * 10 + (*p - '0');
	}
	return value;
}

static const uint8_t acl_mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

int acl_entry_parse(const char *text, bool allow, struct acl_entry *out, char *why,
		    size_t why_len)
{
	char addr_text[ACL_TEXT_MAX];
	const char *written = text;   /* as written, for messages */
	const char *slash = strchr(text, '/');
	size_t addr_len = slash != NULL ? (size_t)(slash - text) : strlen(text);
	struct acl_entry entry = { .allow = allow };
	unsigned total_bits;
	int prefix;

	if (addr_len >= 2 && text[0] == '[' && text[addr_len - 1] == ']') {
		text++;
		addr_len -= 2;
	}
	if (addr_len == 0 || addr_len >= sizeof addr_text)
		goto not_an_address;
	memcpy(addr_text, text, addr_len);
	addr_text[addr_len] = '\0';
	if (inet_pton(AF_INET, addr_text, entry.addr) == 1) {
		entry.family = AF_INET;
		total_bits = 32;
	} else if (inet_pton(AF_INET6, addr_text, entry.addr) == 1) {
		entry.family = AF_INET6;
		total_bits = 128;
	} else {
		goto not_an_address;
	}

	prefix = slash != NULL ? acl_prefix_number(slash + 1) : (int)total_bits;
	if (prefix < 0 || prefix > (int)total_bits) {
		snprintf(why, why_len, "%s: the prefix length must be a number from 0 to %u",
			 written, total_bits);
		return -1;
	}
	entry.prefix_len = (uint8_t)prefix;
	if (!acl_host_bits_clear(entry.addr, entry.prefix_len, total_bits)) {
		struct acl_entry network = entry;
		char suggestion[ACL_ENTRY_STRLEN];
		acl_clear_host_bits(network.addr, network.prefix_len, total_bits / 8);
		snprintf(why, why_len, "%s/%d: host bits set; did you mean %s?", addr_text, prefix,
			 acl_entry_format(&network, suggestion, sizeof suggestion));
		return -1;
	}
	/* ::ffff:10.0.0.0/104 names 10.0.0.0/8, and mapped clients are matched as IPv4. */
	if (entry.family == AF_INET6 && entry.prefix_len >= 96 &&
	    memcmp(entry.addr, acl_mapped_prefix, sizeof acl_mapped_prefix) == 0) {
		memmove(entry.addr, entry.addr + 12, 4);
		memset(entry.addr + 4, 0, 12);
		entry.family = AF_INET;
		entry.prefix_len = (uint8_t)(entry.prefix_len - 96);
	}
	*out = entry;
	return 0;

not_an_address:
	snprintf(why, why_len,
		 "%s: not an IPv4 or IPv6 address or network (\"192.168.0.0/16\", "
		 "\"2001:db8::/32\")", written);
	return -1;
}

int acl_append(struct acl *acl, const struct acl_entry *entry)
{
	if (acl->count >= ACL_MAX_ENTRIES)
		return -1;
	acl->entries[acl->count++] = *entry;
	return 0;
}

/* The client's family and address bytes, a mapped IPv6 address as IPv4; 0 if neither. */
static int acl_client_address(const struct sockaddr *client, const uint8_t **bytes)
{
	if (client->sa_family == AF_INET) {
		*bytes = (const uint8_t *)&((const struct sockaddr_in *)client)->sin_addr;
		return AF_INET;
	}
	if (client->sa_family == AF_INET6) {
		const uint8_t *v6 = ((const struct sockaddr_in6 *)client)->sin6_addr.s6_addr;
		if (memcmp(v6, acl_mapped_prefix, sizeof acl_mapped_prefix) == 0) {
			*bytes = v6 + 12;
			return AF_INET;
		}
		*bytes = v6;
		return AF_INET6;
	}
	return 0;
}

/* Whether the first prefix_len bits of a and b agree. */
static bool acl_prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix_len)
{
	unsigned whole = prefix_len / 8, rest = prefix_len % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff00u >> rest);
	return ((a[whole] ^ b[whole]) & mask) == 0;
}

int acl_match(const struct acl *acl, const struct sockaddr *client)
{
	const uint8_t *bytes = NULL;
	int family = acl_client_address(client, &bytes);

	if (family == 0)
		return -1;
	for (unsigned i = 0; i < acl->count; i++) {
		const struct acl_entry *entry = &acl->entries[i];
		if (entry->family == family && acl_prefix_equal(entry->addr, bytes, entry->prefix_len))
			return (int)i;
	}
	return -1;
}

bool acl_allows(const struct acl *acl, const struct sockaddr *client)
{
	if (acl->count == 0)
		return true;
	int index = acl_match(acl, client);
	return index < 0 || acl->entries[index].allow;
}

const char *acl_entry_format(const struct acl_entry *entry, char *buf, size_t buf_len)
{
	char ip[INET6_ADDRSTRLEN];

	if (inet_ntop(entry->family, entry->addr, ip, sizeof ip) == NULL)
		snprintf(ip, sizeof ip, "?");
	snprintf(buf, buf_len, "%s/%u", ip, entry->prefix_len);
	return buf;
}

bool acl_equal(const struct acl *a, const struct acl *b)
{
	if (a->count != b->count)
		return false;
	for (unsigned i = 0; i < a->count; i++) {
		const struct acl_entry *x = &a->entries[i], *y = &b->entries[i];
		if (x->family != y->family || x->prefix_len != y->prefix_len ||
		    x->allow != y->allow || memcmp(x->addr, y->addr, sizeof x->addr) != 0)
			return false;
	}
	return true;
}

int acl_source_key(const struct sockaddr *client, uint8_t key[ACL_SOURCE_KEY_LEN])
{
	const uint8_t *bytes = NULL;
	int family = acl_client_address(client, &bytes);

	memset(key, 0, ACL_SOURCE_KEY_LEN);
	if (family == AF_INET) {
		memcpy(key, acl_mapped_prefix, sizeof acl_mapped_prefix);
		memcpy(key + 12, bytes, 4);
	} else if (family == AF_INET6) {
		bool link_local = bytes[0] == 0xfe && (bytes[1] & 0xc0) == 0x80;
		memcpy(key, bytes, link_local ? 16 : 8);
	} else {
		return -1;
	}
	return 0;
}
