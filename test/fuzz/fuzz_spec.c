/*
 * fuzz_spec.c - libFuzzer target: -L specs. Each line of the input is one
 * spec given to config_add_spec (as repeated -L options are); then
 * config_finish without the network (fuzz_config_common.h).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_config_common.h"

#define MAX_SPECS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	CHECK(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';

	struct config cfg;
	char err[512];
	config_defaults(&cfg);
	char *line = text;
	for (int specs = 0; line != NULL && specs < MAX_SPECS; specs++) {
		char *next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		size_t before = cfg.forward_count;
		err[0] = '\0';
		if (config_add_spec(&cfg, line, err, sizeof err) == 0) {
			CHECK(cfg.forward_count == before + 1);
			const struct forward *fwd = &cfg.forwards[before];
			CHECK(strstr(fwd->origin, "-L '") == fwd->origin);
		} else {
			CHECK(cfg.forward_count == before);
			check_err(err, sizeof err, false);
			CHECK(strstr(err, "-L '") == err);
		}
		line = next;
	}
	check_forwards(&cfg, false);
	finish_numeric(&cfg, false);
	config_free(&cfg);
	free(text);
	return 0;
}
