/*
 * fuzz_check.h - CHECK(cond), an invariant of a fuzz target: when it does
 * not hold, the target says which one and aborts, and libFuzzer reports the
 * input. A target that can show more (the answer it was checking) defines
 * FUZZ_CHECK_SHOW() before including this file.
 */
#ifndef PORTRELAY_FUZZ_CHECK_H
#define PORTRELAY_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#ifndef FUZZ_CHECK_SHOW
#define FUZZ_CHECK_SHOW() do { } while (0)
#endif

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                  \
			FUZZ_CHECK_SHOW();                                               \
			abort();                                                         \
		}                                                                        \
	} while (0)

#endif
