/*
 * fuzz_config.c - libFuzzer target: config_load_file on the input as a
 * configuration file (libconfig syntax), then -L specs on top, then
 * config_finish without the network (fuzz_config_common.h).
 *
 * The file is an in-memory file (memfd) read through /proc/self/fd: no
 * temporary files. Inputs with '@' are skipped: libconfig's @include would
 * read any path named (/dev/zero never ends), and an include is the
 * administrator's own choice, not input from the network.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_config_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (memchr(data, '@', size) != NULL)
		return 0;
	int fd = memfd_create("portrelay-fuzz.conf", MFD_CLOEXEC);
	CHECK(fd >= 0);
	size_t done = 0;
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);
		CHECK(n > 0);
		done += (size_t)n;
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

	struct config cfg;
	char err[512];
	config_defaults(&cfg);
	err[0] = '\0';
	int rc = config_load_file(&cfg, path, err, sizeof err);
	close(fd);
	if (rc != 0) {
		check_err(err, sizeof err, true);
		CHECK(cfg.forward_count == 0);   /* a bad file adds no forwards */
		config_free(&cfg);
		return 0;
	}
	check_forwards(&cfg, false);
	/* -L rules on top of the file's, as main.c combines them. */
	size_t before = cfg.forward_count;
	if (config_add_spec(&cfg, "tcp:18080:127.0.0.1:80", err, sizeof err) == 0)
		CHECK(cfg.forward_count == before + 1);
	else
		check_err(err, sizeof err, false);
	config_add_spec(&cfg, "ftp:[::1]:2121:[::1]:21", err, sizeof err);
	finish_numeric(&cfg, true);
	config_free(&cfg);
	CHECK(cfg.forward_count == 0 && cfg.forwards == NULL);
	return 0;
}
