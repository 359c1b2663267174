/*
 * fuzz_config_common.h - what the configuration targets share: config_finish
 * without the network, and checks on the table it leaves.
 *
 * config_finish resolves internal host names with getaddrinfo. The fuzz
 * build compiles net.c with -Dgetaddrinfo=fuzz_getaddrinfo_forbidden (see
 * test/fuzz/run), so any call that would reach the resolver aborts; and
 * before config_finish every internal host that is not a numeric address
 * is replaced by one, so that none does.
 */
#ifndef PORTRELAY_FUZZ_CONFIG_COMMON_H
#define PORTRELAY_FUZZ_CONFIG_COMMON_H

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

#include "portrelay/acl.h"
#include "portrelay/config.h"
#include "portrelay/net.h"

#include "fuzz_check.h"

int fuzz_getaddrinfo_forbidden(const char *node, const char *service,
			       const struct addrinfo *hints, struct addrinfo **res);

int fuzz_getaddrinfo_forbidden(const char *node, const char *service,
			       const struct addrinfo *hints, struct addrinfo **res)
{
	(void)service;
	(void)hints;
	(void)res;
	fprintf(stderr, "getaddrinfo(\"%s\") reached: the fuzzer must not resolve names\n",
		node != NULL ? node : "");
	abort();
}

/*
 * An error message is NUL-terminated within its buffer and, unless it
 * quotes a value that had one, holds no line end: config_file.c quotes a
 * file's strings as they are, so "31000-31999<LF>" makes a two-line message
 * (reported; that is config_file.c's to change, not the fuzzer's to hide
 * for -L specs, which cannot hold one).
 */
static void check_err(const char *err, size_t len, bool input_may_have_line_ends)
{
	/* One line, whatever the input held: control characters come escaped. */
	(void)input_may_have_line_ends;
	CHECK(memchr(err, '\0', len) != NULL);
	for (const char *p = err; *p != '\0'; p++)
		CHECK(!iscntrl((unsigned char)*p));
}

static void check_forwards(const struct config *cfg, bool finished)
{
	char buf[1024];
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		CHECK(fwd->proto == FORWARD_TCP || fwd->proto == FORWARD_UDP ||
		      fwd->proto == FORWARD_BOTH);
		CHECK(fwd->external_port_first >= 1 &&
		      fwd->external_port_first <= fwd->external_port_last);
		CHECK(memchr(fwd->name, '\0', sizeof fwd->name) != NULL);
		CHECK(memchr(fwd->internal_host, '\0', sizeof fwd->internal_host) != NULL);
		CHECK(memchr(fwd->external_host, '\0', sizeof fwd->external_host) != NULL);
		CHECK(!fwd->ftp || fwd->proto == FORWARD_TCP);
		/* Source rules: within bounds, each a network (no host bits set). */
		CHECK(fwd->acl.count <= ACL_MAX_ENTRIES);
		for (unsigned e = 0; e < fwd->acl.count; e++) {
			const struct acl_entry *entry = &fwd->acl.entries[e];
			unsigned bits = entry->family == AF_INET ? 32 : 128;
			CHECK(entry->family == AF_INET || entry->family == AF_INET6);
			CHECK(entry->prefix_len <= bits);
			for (unsigned b = entry->prefix_len; b < 128; b++)
				CHECK(!(entry->addr[b / 8] & (0x80u >> (b % 8))));
		}
		if (!finished)
			continue;
		CHECK(fwd->internal_port_first >= 1);
		CHECK(fwd->internal_port_last - fwd->internal_port_first ==
		      fwd->external_port_last - fwd->external_port_first);
		unsigned count = forward_port_count(fwd);
		CHECK(count == (unsigned)(fwd->external_port_last - fwd->external_port_first) + 1);
		const char *text = forward_describe(fwd, buf, sizeof buf);
		CHECK(text != NULL && memchr(buf, '\0', sizeof buf) != NULL);
		if (fwd->enabled) {
			struct net_addr last = forward_internal_addr(fwd, fwd->external_port_last);
			CHECK(net_addr_port(&last) == fwd->internal_port_last);
		}
	}
}

/* config_finish with every internal host numeric: never the resolver. */
static void finish_numeric(struct config *cfg, bool input_may_have_line_ends)
{
	char err[512];
	for (size_t i = 0; i < cfg->forward_count; i++) {
		struct net_addr addr;
		struct forward *fwd = &cfg->forwards[i];
		if (net_addr_parse_ip(fwd->internal_host, 0, &addr) != 0)
			snprintf(fwd->internal_host, sizeof fwd->internal_host, "%s",
				 i % 2 ? "192.0.2.10" : "2001:db8::10");
	}
	err[0] = '\0';
	if (config_finish(cfg, err, sizeof err) == 0)
		check_forwards(cfg, true);
	else
		check_err(err, sizeof err, input_may_have_line_ends);
}

#endif
