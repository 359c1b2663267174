/*
 * config_spec.c - config_add_spec: parses one -L SPEC,
 * PROTO:[EXT_ADDR:]EXT_PORT:INT_HOST:INT_PORT, and appends the forward.
 * IPv6 addresses are written in brackets, with a scope if they need one:
 * "udp:[::1]:5353:[fe80::1%eth0]:53".
 * Checks what the spec alone can tell; config_finish (config.c) does the
 * rest.
 */
#include "portrelay/config.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config_internal.h"

static const char config_spec_usage[] =
	"expected PROTO:[EXT_ADDR:]EXT_PORT:INT_HOST:INT_PORT";
/* PROTO "ftp" is tcp with the FTP helper. */

#define CONFIG_SPEC_FIELDS_MAX 5

struct config_spec_field {
	const char *text;
	size_t len;
	bool bracketed;
};

/*
 * Splits a spec at the colons outside brackets, so that "[::1]" stays one
 * field. Returns the number of fields (only the first `max` are stored), or
 * -1 with *why set.
 */
static int config_spec_split(const char *spec, struct config_spec_field *fields, int max,
			     const char **why)
{
	const char *p = spec;
	int count = 0;

	for (;;) {
		struct config_spec_field field = { .text = p, .bracketed = false };

		if (*p == '[') {
			const char *close = strchr(p, ']');
			if (close == NULL) {
				*why = "unclosed bracket '['";
				return -1;
			}
			field = (struct config_spec_field){ p + 1, (size_t)(close - p - 1), true };
			p = close + 1;
			if (*p != ':' && *p != '\0') {
				*why = "expected ':' after ']'";
				return -1;
			}
		} else {
			field.len = strcspn(p, ":[]");
			p += field.len;
			if (*p == '[' || *p == ']') {
				*why = "a bracket may only enclose a whole address, as in [::1]";
				return -1;
			}
		}
		if (count < max)
			fields[count] = field;
		count++;
		if (*p == '\0')
			return count;
		p++;   /* the ':' */
	}
}

/* Copies a field into buf; -1 if it does not fit. */
static int config_spec_copy(const struct config_spec_field *field, char *buf, size_t len)
{
	if (field->len >= len)
		return -1;
	memcpy(buf, field->text, field->len);
	buf[field->len] = '\0';
	return 0;
}

static int config_spec_proto(const struct config_spec_field *field, struct forward *fwd,
			     char *why, size_t why_len)
{
	char text[8];

	if (!field->bracketed && config_spec_copy(field, text, sizeof text) == 0 &&
	    strcmp(text, "ftp") == 0) {
		/* tcp with the FTP helper */
		fwd->proto = FORWARD_TCP;
		fwd->ftp = true;
		return 0;
	}
	if (field->bracketed || config_spec_copy(field, text, sizeof text) < 0 ||
	    config_proto_parse(text, &fwd->proto) < 0)
		return config_reason(why, why_len,
				     "unknown protocol \"%.*s\" (tcp, udp, both or ftp)",
				     (int)field->len, field->text);
	return 0;
}

static int config_spec_ports(const struct config_spec_field *field, const char *subject,
			     struct config_ports *ports, char *why, size_t why_len)
{
	char text[CONFIG_PORT_TEXT_MAX];

	if (field->bracketed || config_spec_copy(field, text, sizeof text) < 0)
		return config_reason(why, why_len,
				     "%s \"%.*s\" is not a port number or a range N-M",
				     subject, (int)field->len, field->text);
	return config_ports_parse(text, subject, ports, why, why_len);
}

static int config_spec_external_address(const struct config_spec_field *field,
					struct forward *fwd, char *why, size_t why_len)
{
	char bare[CONFIG_HOST_MAX];

	if (field->len == 0)
		return config_reason(why, why_len, "external address is empty");
	/* Numeric, and a scope only in brackets (a bare one was split at its colons). */
	if (config_spec_copy(field, fwd->external_host, sizeof fwd->external_host) < 0 ||
	    !config_numeric_address(fwd->external_host, bare, sizeof bare))
		return config_reason(why, why_len, "external address \"%.*s\" is not "
				     "a numeric IPv4 or IPv6 address", (int)field->len, field->text);
	return 0;
}

static int config_spec_internal_host(const struct config_spec_field *field,
				     struct forward *fwd, char *why, size_t why_len)
{
	char bare[CONFIG_HOST_MAX];
	const char *problem;

	if (field->len == 0)
		return config_reason(why, why_len, "internal host is empty");
	if (config_spec_copy(field, fwd->internal_host, sizeof fwd->internal_host) < 0)
		return config_reason(why, why_len, "internal host is too long");
	problem = config_host_problem(fwd->internal_host);
	if (problem != NULL)
		return config_reason(why, why_len, "internal host \"%s\" %s",
				     fwd->internal_host, problem);
	/*
	 * Brackets promise an address literal, not a name: IPv4, IPv6, or IPv6
	 * with a scope ("[fe80::1%eth0]"), as the file's internal_ip takes it.
	 */
	if (field->bracketed && !config_numeric_address(fwd->internal_host, bare, sizeof bare))
		return config_reason(why, why_len,
				     "internal host \"[%s]\" is not a numeric address",
				     fwd->internal_host);
	return 0;
}

/* PROTO:[EXT_ADDR:]EXT_PORT[-EXT_END]:INT_HOST:INT_PORT[-INT_END] */
static int config_spec_parse(const char *spec, struct forward *fwd, char *why, size_t why_len)
{
	struct config_spec_field fields[CONFIG_SPEC_FIELDS_MAX];
	struct config_ports external, internal;
	const char *problem = NULL;
	int count = config_spec_split(spec, fields, CONFIG_SPEC_FIELDS_MAX, &problem);

	if (count < 0)
		return config_reason(why, why_len, "%s", problem);
	if (count > CONFIG_SPEC_FIELDS_MAX)
		return config_reason(why, why_len, "%s (write IPv6 addresses in brackets)",
				     config_spec_usage);
	if (count < CONFIG_SPEC_FIELDS_MAX - 1)
		return config_reason(why, why_len, "%s", config_spec_usage);

	const struct config_spec_field *field = fields;
	if (config_spec_proto(field++, fwd, why, why_len) < 0)
		return -1;
	if (count == CONFIG_SPEC_FIELDS_MAX &&
	    config_spec_external_address(field++, fwd, why, why_len) < 0)
		return -1;
	if (config_spec_ports(field++, "external port", &external, why, why_len) < 0 ||
	    config_spec_internal_host(field++, fwd, why, why_len) < 0 ||
	    config_spec_ports(field, "internal port", &internal, why, why_len) < 0)
		return -1;
	return config_forward_set_ports(fwd, &external, "external port", &internal,
					"internal port", why, why_len);
}

int config_add_spec(struct config *cfg, const char *spec, char *err, size_t err_len)
{
	char why[CONFIG_REASON_MAX];
	struct forward fwd;

	config_forward_defaults(&fwd);
	snprintf(fwd.origin, sizeof fwd.origin, "-L '%s'", spec);
	if (config_spec_parse(spec, &fwd, why, sizeof why) < 0)
		return config_fail(err, err_len, fwd.origin, "", "%s", why);
	config_default_name(&fwd);
	if (config_append_forward(cfg, &fwd) < 0)
		return config_fail(err, err_len, fwd.origin, "", "out of memory");
	return 0;
}
