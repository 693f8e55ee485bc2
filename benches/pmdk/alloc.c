/*
 * PMDK peer of `cargo run --release -p pmstore-alloc --example alloc_bench`: an atomic
 * pmemobj_alloc of 64 B into a root slot, then pmemobj_free of it, per pair; in flush mode on
 * /dev/shm (run with PMEM_IS_PMEM_FORCE=1). One block stays allocated, as in the Rust bench.
 * Prints {"lib":"pmdk","workload":"atomic_alloc_free","ns_per_pair":...}.
 *
 * usage: pmdk_alloc POOL_PATH [PAIRS]
 */
#include <libpmemobj.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct root {
	PMEMoid slot;
	PMEMoid keep;
};

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s POOL_PATH [PAIRS]\n", argv[0]);
		return 2;
	}
	long pairs = argc > 2 ? atol(argv[2]) : 200000;
	PMEMobjpool *pop = pmemobj_create(argv[1], "alloc-bench", 64 << 20, 0600);
	if (pop == NULL) {
		perror("pmemobj_create");
		return 1;
	}
	PMEMoid root_oid = pmemobj_root(pop, sizeof(struct root));
	struct root *r = pmemobj_direct(root_oid);
	if (pmemobj_alloc(pop, &r->keep, 64, 0, NULL, NULL)) {
		perror("pmemobj_alloc");
		return 1;
	}
	for (long i = 0; i < pairs / 10; i++) {
		pmemobj_alloc(pop, &r->slot, 64, 0, NULL, NULL);
		pmemobj_free(&r->slot);
	}
	double t0 = now_ns();
	for (long i = 0; i < pairs; i++) {
		if (pmemobj_alloc(pop, &r->slot, 64, 0, NULL, NULL)) {
			perror("pmemobj_alloc");
			return 1;
		}
		pmemobj_free(&r->slot);
	}
	double t1 = now_ns();
	printf("{\"lib\":\"pmdk\",\"workload\":\"atomic_alloc_free\",\"ns_per_pair\":%.1f,\"pairs\":%ld}\n",
	       (t1 - t0) / pairs, pairs);
	pmemobj_close(pop);
	return 0;
}
