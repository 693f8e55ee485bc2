/*
 * PMDK (libpmemobj + libpmem) peer of the vs_pmdk harness (benches/vs_pmdk/main.rs), which
 * compiles it at run time:
 *
 *   cc -O2 -Wall -Wextra -pthread -o pmdk_peer pmdk_peer.c -lpmemobj -lpmem
 *
 * usage: pmdk_peer WORKLOAD POOL_PATH N WARM THREADS [POOL_MIB]
 *
 * Creates POOL_PATH (it must not exist), runs WARM untimed then N timed operations of WORKLOAD
 * (split evenly across THREADS threads, each on its own objects), removes the pool and prints
 * one JSON line per result:
 *
 *   {"lib":"pmdk","workload":W,"mode":"flush"|"msync","is_pmem":0|1,"n":N,"threads":T,
 *    "ns_per_op":X}
 *
 * mode is "flush" when PMEM_IS_PMEM_FORCE=1 is set (libpmem then persists with cache-line
 * flushes + sfence: put the pool on tmpfs), else "msync". is_pmem is pmem_is_pmem() of the
 * mapped pool as libpmem decided it: 1 means flushes were used, 0 means msync.
 *
 * Workloads: the definitions are the same as the pmstore side's (benches/vs_pmdk/pmstore_side.rs)
 * and docs/PERFORMANCE.md describes them; in short:
 *   tx_update_8B       per op one transaction adding 8 bytes of the thread's own 64-byte,
 *                      64-byte-aligned object (pmemobj_tx_add_range) and incrementing them;
 *   tx_update_256B     one transaction adding and incrementing all 32 words of the thread's
 *                      256-byte, 64-byte-aligned object (4 cache lines);
 *   tx_update_4x64B    one transaction adding and incrementing four separate 64-byte objects;
 *   tx_alloc_free      a PAIR of transactions: pmemobj_tx_alloc(64) into the thread's root
 *                      slot, then pmemobj_tx_free of it and clear the slot (ns per pair);
 *   atomic_alloc_free  pmemobj_alloc(64) into the thread's root slot, then pmemobj_free (pair);
 *   kv                 N puts of random 8-byte keys with 64-byte values into a hash map modeled
 *                      on PMDK's examples/libpmemobj/hashmap/hashmap_tx.c (one transaction and
 *                      one pmemobj_tx_alloc per new node, chained buckets, rebuilt twice as
 *                      large inside one transaction when count > 5 * buckets, starting at 10
 *                      buckets), then N gets of the same keys in a shuffled order, each
 *                      checked; prints kv_put and kv_get (single thread, WARM ignored);
 *   open               untimed: a POOL_MIB (default 1024) MiB pool is filled with N 64-byte
 *                      objects (pmemobj_alloc) and closed; timed: pmemobj_open + the first
 *                      pmemobj_alloc (ns_per_op is that one time; WARM ignored);
 *   persist_64B        libpmem on a 64 MiB pmem_map_file mapping: an 8-byte store, then
 *                      pmem_persist of its 64-byte line (flush mode);
 *   copy_nt_256B       pmem_memcpy_persist of 256 bytes (non-temporal stores; flush mode);
 *   msync_1_page       an 8-byte store, then pmem_msync of it: one dirty 4 KiB page (msync mode).
 * The floors walk through a 4 MiB window, advancing by their footprint (64 B, 256 B, 4 KiB),
 * as benches/persist.rs does.
 *
 * Any PMDK error aborts with a message and exit status 1.
 */
#define _GNU_SOURCE
#include <libpmem.h>
#include <libpmemobj.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE 64
#define MAXT 8
#define TX_POOL_SIZE ((size_t)64 << 20)
#define LAYOUT "vs-pmdk"

struct root {
	/* alloc workloads: thread t's object being allocated and freed is slot[t][0]; the rows
	 * are 256 bytes apart (as pmstore's, whose lock stripes are 256 bytes), so two threads'
	 * slots never share a cache line */
	PMEMoid slot[MAXT][16];
	PMEMoid keep;          /* alloc workloads: one block that stays allocated */
	PMEMoid ctr[MAXT];     /* tx_update_8B: 64-byte objects, counter in the first word */
	PMEMoid big[MAXT];     /* tx_update_256B */
	PMEMoid four[MAXT][4]; /* tx_update_4x64B */
	PMEMoid map;           /* kv: struct hashmap */
};

static PMEMobjpool *pop;
static PMEMoid root_oid;
static struct root *r;
static int is_pmem;
static const char *mode;

static void die(const char *what)
{
	const char *msg = pmemobj_errormsg();
	fprintf(stderr, "pmdk_peer: %s failed: %s\n", what, msg && *msg ? msg : "(no message)");
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void print_result(const char *workload, long n, int threads, double ns)
{
	printf("{\"lib\":\"pmdk\",\"workload\":\"%s\",\"mode\":\"%s\",\"is_pmem\":%d,\"n\":%ld,"
	       "\"threads\":%d,\"ns_per_op\":%.1f}\n",
	       workload, mode, is_pmem, n, threads, ns);
	fflush(stdout);
}

static void create_obj_pool(const char *path, size_t size)
{
	pop = pmemobj_create(path, LAYOUT, size, 0600);
	if (pop == NULL)
		die("pmemobj_create");
	root_oid = pmemobj_root(pop, sizeof(struct root));
	if (OID_IS_NULL(root_oid))
		die("pmemobj_root");
	r = pmemobj_direct(root_oid);
	is_pmem = pmem_is_pmem(r, sizeof(*r));
}

/* A header-less allocation class of UNIT-byte objects aligned to 64 bytes. */
static unsigned aligned_class(size_t unit)
{
	struct pobj_alloc_class_desc d = {
		.unit_size = unit,
		.alignment = LINE,
		.units_per_block = 1024,
		.header_type = POBJ_HEADER_NONE,
	};
	if (pmemobj_ctl_set(pop, "heap.alloc_class.new.desc", &d) != 0)
		die("pmemobj_ctl_set(heap.alloc_class.new.desc)");
	return d.class_id;
}

static void aligned_alloc_obj(PMEMoid *oidp, size_t size, unsigned class_id)
{
	if (pmemobj_xalloc(pop, oidp, size, 0, POBJ_CLASS_ID(class_id), NULL, NULL) != 0)
		die("pmemobj_xalloc");
	if (((uintptr_t)pmemobj_direct(*oidp) & (LINE - 1)) != 0) {
		fprintf(stderr, "pmdk_peer: object not 64-byte aligned\n");
		exit(1);
	}
}

/* ---------------- transaction and allocation workloads ---------------- */

static void op_8B(int t)
{
	uint64_t *ctr = pmemobj_direct(r->ctr[t]);
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(r->ctr[t], 0, 8) != 0)
			pmemobj_tx_abort(-1);
		(*ctr)++;
	} TX_ONABORT {
		die("tx_update_8B transaction");
	} TX_END
}

static void op_256B(int t)
{
	uint64_t *w = pmemobj_direct(r->big[t]);
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(r->big[t], 0, 256) != 0)
			pmemobj_tx_abort(-1);
		for (int k = 0; k < 32; k++)
			w[k]++;
	} TX_ONABORT {
		die("tx_update_256B transaction");
	} TX_END
}

static void op_4x64B(int t)
{
	TX_BEGIN(pop) {
		for (int j = 0; j < 4; j++) {
			uint64_t *w = pmemobj_direct(r->four[t][j]);
			if (pmemobj_tx_add_range(r->four[t][j], 0, 64) != 0)
				pmemobj_tx_abort(-1);
			for (int k = 0; k < 8; k++)
				w[k]++;
		}
	} TX_ONABORT {
		die("tx_update_4x64B transaction");
	} TX_END
}

static void op_tx_alloc_free(int t)
{
	uint64_t off = offsetof(struct root, slot) + (uint64_t)t * sizeof(r->slot[0]);
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(root_oid, off, sizeof(PMEMoid)) != 0)
			pmemobj_tx_abort(-1);
		r->slot[t][0] = pmemobj_tx_alloc(64, 0);
	} TX_ONABORT {
		die("tx_alloc_free: alloc transaction");
	} TX_END
	TX_BEGIN(pop) {
		if (pmemobj_tx_add_range(root_oid, off, sizeof(PMEMoid)) != 0)
			pmemobj_tx_abort(-1);
		if (pmemobj_tx_free(r->slot[t][0]) != 0)
			pmemobj_tx_abort(-1);
		r->slot[t][0] = OID_NULL;
	} TX_ONABORT {
		die("tx_alloc_free: free transaction");
	} TX_END
}

static void op_atomic_alloc_free(int t)
{
	if (pmemobj_alloc(pop, &r->slot[t][0], 64, 0, NULL, NULL) != 0)
		die("pmemobj_alloc");
	pmemobj_free(&r->slot[t][0]);
}

static void setup_objects(int threads)
{
	unsigned c64 = aligned_class(64), c256 = aligned_class(256);
	for (int t = 0; t < threads; t++) {
		aligned_alloc_obj(&r->ctr[t], 64, c64);
		aligned_alloc_obj(&r->big[t], 256, c256);
		for (int j = 0; j < 4; j++)
			aligned_alloc_obj(&r->four[t][j], 64, c64);
	}
	/* One 64-byte block stays allocated, so alloc/free pairs do not open and close a run. */
	if (pmemobj_alloc(pop, &r->keep, 64, 0, NULL, NULL) != 0)
		die("pmemobj_alloc(keep)");
	pmemobj_persist(pop, r, sizeof(*r));
}

static int check_objects(const char *w, int threads, long per_thread)
{
	for (int t = 0; t < threads; t++) {
		uint64_t *c = pmemobj_direct(r->ctr[t]);
		uint64_t *b = pmemobj_direct(r->big[t]);
		uint64_t *f = pmemobj_direct(r->four[t][3]);
		if (strcmp(w, "tx_update_8B") == 0 && c[0] != (uint64_t)per_thread)
			return 0;
		if (strcmp(w, "tx_update_256B") == 0 && b[31] != (uint64_t)per_thread)
			return 0;
		if (strcmp(w, "tx_update_4x64B") == 0 && f[7] != (uint64_t)per_thread)
			return 0;
		if (!OID_IS_NULL(r->slot[t][0]))
			return 0;
	}
	return 1;
}

struct thread_arg {
	void (*op)(int);
	int t;
	long warm, n;
	pthread_barrier_t *barrier;
	uint64_t start, end;
};

static void *thread_main(void *p)
{
	struct thread_arg *a = p;
	for (long i = 0; i < a->warm; i++)
		a->op(a->t);
	pthread_barrier_wait(a->barrier);
	a->start = now_ns();
	for (long i = 0; i < a->n; i++)
		a->op(a->t);
	a->end = now_ns();
	return NULL;
}

static int run_tx(const char *w, const char *path, long n, long warm, int threads)
{
	void (*op)(int) = NULL;
	if (strcmp(w, "tx_update_8B") == 0)
		op = op_8B;
	else if (strcmp(w, "tx_update_256B") == 0)
		op = op_256B;
	else if (strcmp(w, "tx_update_4x64B") == 0)
		op = op_4x64B;
	else if (strcmp(w, "tx_alloc_free") == 0)
		op = op_tx_alloc_free;
	else if (strcmp(w, "atomic_alloc_free") == 0)
		op = op_atomic_alloc_free;
	else
		return 2;
	create_obj_pool(path, TX_POOL_SIZE);
	setup_objects(threads);
	long per = n / threads, warm_per = warm / threads;
	pthread_barrier_t barrier;
	pthread_barrier_init(&barrier, NULL, (unsigned)threads);
	struct thread_arg args[MAXT];
	pthread_t tids[MAXT];
	for (int t = 0; t < threads; t++) {
		args[t] = (struct thread_arg){ op, t, warm_per, per, &barrier, 0, 0 };
		if (pthread_create(&tids[t], NULL, thread_main, &args[t]) != 0) {
			perror("pthread_create");
			exit(1);
		}
	}
	uint64_t start = UINT64_MAX, end = 0;
	for (int t = 0; t < threads; t++) {
		pthread_join(tids[t], NULL);
		if (args[t].start < start)
			start = args[t].start;
		if (args[t].end > end)
			end = args[t].end;
	}
	if (!check_objects(w, threads, per + warm_per)) {
		fprintf(stderr, "pmdk_peer: %s: final state check failed\n", w);
		exit(1);
	}
	pmemobj_close(pop);
	unlink(path);
	print_result(w, per * threads, threads, (double)(end - start) / (double)(per * threads));
	return 0;
}

/* ---------------- kv: a hash map after PMDK's hashmap_tx ---------------- */

#define INIT_BUCKETS 10
#define MAX_LOAD 5 /* hashmap_tx's MAX_HASHSET_THRESHOLD */
#define HASH_P 32212254719ULL /* hashmap_tx's HASH_FUNC_COEFF_P */
#define HASH_A 1931148733ULL
#define HASH_B 2791375111ULL

struct entry {
	uint64_t key;
	PMEMoid next;
	uint8_t value[64];
};

struct buckets {
	uint64_t nbuckets;
	PMEMoid bucket[];
};

struct hashmap {
	uint64_t count;
	PMEMoid buckets;
};

static inline uint64_t hm_hash(uint64_t nbuckets, uint64_t key)
{
	return ((HASH_A * key + HASH_B) % HASH_P) % nbuckets;
}

static void hm_create(void)
{
	TX_BEGIN(pop) {
		pmemobj_tx_add_range(root_oid, offsetof(struct root, map), sizeof(PMEMoid));
		r->map = pmemobj_tx_zalloc(sizeof(struct hashmap), 0);
		struct hashmap *h = pmemobj_direct(r->map);
		h->buckets =
			pmemobj_tx_zalloc(sizeof(struct buckets) + INIT_BUCKETS * sizeof(PMEMoid), 0);
		struct buckets *b = pmemobj_direct(h->buckets);
		b->nbuckets = INIT_BUCKETS;
	} TX_ONABORT {
		die("kv: create");
	} TX_END
}

static void hm_rebuild(uint64_t new_len)
{
	struct hashmap *h = pmemobj_direct(r->map);
	TX_BEGIN(pop) {
		PMEMoid old_oid = h->buckets;
		struct buckets *old = pmemobj_direct(old_oid);
		PMEMoid new_oid =
			pmemobj_tx_zalloc(sizeof(struct buckets) + new_len * sizeof(PMEMoid), 0);
		struct buckets *nb = pmemobj_direct(new_oid);
		nb->nbuckets = new_len;
		for (uint64_t i = 0; i < old->nbuckets; i++) {
			while (!OID_IS_NULL(old->bucket[i])) {
				PMEMoid en = old->bucket[i];
				struct entry *e = pmemobj_direct(en);
				uint64_t k = hm_hash(new_len, e->key);
				old->bucket[i] = e->next; /* the old array is freed below */
				pmemobj_tx_add_range(en, offsetof(struct entry, next), sizeof(PMEMoid));
				e->next = nb->bucket[k];
				nb->bucket[k] = en;
			}
		}
		pmemobj_tx_free(old_oid);
		pmemobj_tx_add_range(r->map, offsetof(struct hashmap, buckets), sizeof(PMEMoid));
		h->buckets = new_oid;
	} TX_ONABORT {
		die("kv: rebuild");
	} TX_END
}

static void hm_put(uint64_t key, const uint8_t *value)
{
	struct hashmap *h = pmemobj_direct(r->map);
	struct buckets *b = pmemobj_direct(h->buckets);
	uint64_t k = hm_hash(b->nbuckets, key);
	for (PMEMoid en = b->bucket[k]; !OID_IS_NULL(en);) {
		struct entry *e = pmemobj_direct(en);
		if (e->key == key) {
			TX_BEGIN(pop) {
				pmemobj_tx_add_range(en, offsetof(struct entry, value), 64);
				memcpy(e->value, value, 64);
			} TX_ONABORT {
				die("kv: put (replace)");
			} TX_END
			return;
		}
		en = e->next;
	}
	TX_BEGIN(pop) {
		pmemobj_tx_add_range(h->buckets,
				     offsetof(struct buckets, bucket) + k * sizeof(PMEMoid),
				     sizeof(PMEMoid));
		pmemobj_tx_add_range(r->map, offsetof(struct hashmap, count), sizeof(uint64_t));
		PMEMoid en = pmemobj_tx_alloc(sizeof(struct entry), 0);
		struct entry *e = pmemobj_direct(en);
		e->key = key;
		memcpy(e->value, value, 64);
		e->next = b->bucket[k];
		b->bucket[k] = en;
		h->count++;
	} TX_ONABORT {
		die("kv: put");
	} TX_END
	if (b->nbuckets * MAX_LOAD < h->count)
		hm_rebuild(b->nbuckets * 2);
}

static const uint8_t *hm_get(uint64_t key)
{
	struct hashmap *h = pmemobj_direct(r->map);
	struct buckets *b = pmemobj_direct(h->buckets);
	for (PMEMoid en = b->bucket[hm_hash(b->nbuckets, key)]; !OID_IS_NULL(en);) {
		struct entry *e = pmemobj_direct(en);
		if (e->key == key)
			return e->value;
		en = e->next;
	}
	return NULL;
}

/* The key and value sequence of pmstore's `kv bench` (examples/kv/main.rs, crash.rs). */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t bench_key(uint64_t i)
{
	return mix(i ^ 0x6b7662656e636800ULL);
}

static void bench_value(uint64_t i, uint8_t out[64])
{
	for (uint64_t j = 0; j < 8; j++) {
		uint64_t w = (i * 31) ^ j;
		memcpy(out + 8 * j, &w, 8);
	}
}

static int run_kv(const char *path, long n)
{
	create_obj_pool(path, ((size_t)64 << 20) + (size_t)n * 256);
	hm_create();
	uint8_t v[64];
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++) {
		bench_value((uint64_t)i, v);
		hm_put(bench_key((uint64_t)i), v);
	}
	uint64_t t1 = now_ns();
	/* Shuffled lookup order, as the pmstore bench's thread 0 makes it. */
	uint64_t *order = malloc((size_t)n * sizeof(uint64_t));
	if (order == NULL) {
		perror("malloc");
		exit(1);
	}
	for (long i = 0; i < n; i++)
		order[i] = (uint64_t)i;
	uint64_t x = mix(0 ^ 0x5678);
	for (long i = n - 1; i >= 1; i--) {
		x = mix(x);
		uint64_t j = x % (uint64_t)(i + 1);
		uint64_t tmp = order[i];
		order[i] = order[j];
		order[j] = tmp;
	}
	uint8_t got[64];
	uint64_t t2 = now_ns();
	for (long i = 0; i < n; i++) {
		uint64_t k = order[i];
		const uint8_t *p = hm_get(bench_key(k));
		if (p == NULL) {
			fprintf(stderr, "pmdk_peer: kv: key %lu missing\n", (unsigned long)k);
			exit(1);
		}
		memcpy(got, p, 64);
		bench_value(k, v);
		if (memcmp(got, v, 64) != 0) {
			fprintf(stderr, "pmdk_peer: kv: key %lu read wrong\n", (unsigned long)k);
			exit(1);
		}
	}
	uint64_t t3 = now_ns();
	free(order);
	struct hashmap *h = pmemobj_direct(r->map);
	if (h->count != (uint64_t)n) {
		fprintf(stderr, "pmdk_peer: kv: count %lu, expected %ld\n", (unsigned long)h->count, n);
		exit(1);
	}
	pmemobj_close(pop);
	unlink(path);
	print_result("kv_put", n, 1, (double)(t1 - t0) / (double)n);
	print_result("kv_get", n, 1, (double)(t3 - t2) / (double)n);
	return 0;
}

/* ---------------- open + first allocation ---------------- */

static int run_open(const char *path, long objects, size_t pool_mib)
{
	create_obj_pool(path, pool_mib << 20);
	for (long i = 0; i < objects; i++)
		if (pmemobj_alloc(pop, &r->slot[0][0], 64, 0, NULL, NULL) != 0)
			die("pmemobj_alloc (fill)");
	pmemobj_close(pop);
	uint64_t t0 = now_ns();
	pop = pmemobj_open(path, LAYOUT);
	if (pop == NULL)
		die("pmemobj_open");
	root_oid = pmemobj_root(pop, sizeof(struct root));
	r = pmemobj_direct(root_oid);
	if (pmemobj_alloc(pop, &r->slot[1][0], 64, 0, NULL, NULL) != 0)
		die("pmemobj_alloc (first after open)");
	uint64_t t1 = now_ns();
	is_pmem = pmem_is_pmem(r, sizeof(*r));
	pmemobj_close(pop);
	unlink(path);
	print_result("open", 1, 1, (double)(t1 - t0));
	return 0;
}

/* ---------------- libpmem floors ---------------- */

#define FLOOR_FILE ((size_t)64 << 20)
#define FLOOR_BASE ((size_t)(1 << 20) + 8192) /* pmstore's heap offset, default geometry */
#define FLOOR_WINDOW ((size_t)4 << 20)

static int run_floor(const char *w, const char *path, long n, long warm)
{
	size_t stride;
	if (strcmp(w, "persist_64B") == 0)
		stride = 64;
	else if (strcmp(w, "copy_nt_256B") == 0)
		stride = 256;
	else if (strcmp(w, "msync_1_page") == 0)
		stride = 4096;
	else
		return 2;
	size_t mapped_len;
	char *base = pmem_map_file(path, FLOOR_FILE, PMEM_FILE_CREATE | PMEM_FILE_EXCL, 0600,
				   &mapped_len, &is_pmem);
	if (base == NULL) {
		fprintf(stderr, "pmdk_peer: pmem_map_file %s: %s\n", path, pmem_errormsg());
		return 1;
	}
	is_pmem = is_pmem && pmem_is_pmem(base, mapped_len);
	static char src[256];
	memset(src, 0x5a, sizeof(src));
	for (size_t p = 0; p < FLOOR_WINDOW; p += 4096)
		base[FLOOR_BASE + p] = 0;
	if (is_pmem)
		pmem_persist(base + FLOOR_BASE, FLOOR_WINDOW);
	else if (pmem_msync(base + FLOOR_BASE, FLOOR_WINDOW) != 0) {
		perror("pmem_msync");
		return 1;
	}
	size_t next = 0;
	uint64_t t0 = 0;
	for (long i = 0; i < warm + n; i++) {
		if (i == warm)
			t0 = now_ns();
		char *p = base + FLOOR_BASE + next;
		next += stride;
		if (next + stride > FLOOR_WINDOW)
			next = 0;
		uint64_t v = (uint64_t)i;
		switch (stride) {
		case 64:
			memcpy(p, &v, 8);
			pmem_persist(p, 64);
			break;
		case 256:
			pmem_memcpy_persist(p, src, sizeof(src));
			break;
		default:
			memcpy(p, &v, 8);
			if (pmem_msync(p, 8) != 0) {
				perror("pmem_msync");
				return 1;
			}
		}
	}
	uint64_t t1 = now_ns();
	pmem_unmap(base, mapped_len);
	unlink(path);
	print_result(w, n, 1, (double)(t1 - t0) / (double)n);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr,
			"usage: %s WORKLOAD POOL_PATH N WARM THREADS [POOL_MIB]\n"
			"workloads: tx_update_8B tx_update_256B tx_update_4x64B tx_alloc_free "
			"atomic_alloc_free kv open persist_64B copy_nt_256B msync_1_page\n",
			argv[0]);
		return 2;
	}
	const char *w = argv[1], *path = argv[2];
	long n = atol(argv[3]), warm = atol(argv[4]);
	int threads = atoi(argv[5]);
	size_t pool_mib = argc > 6 ? (size_t)atol(argv[6]) : 1024;
	if (n <= 0 || warm < 0 || threads < 1 || threads > MAXT || n < threads) {
		fprintf(stderr, "pmdk_peer: bad N, WARM or THREADS (1..%d)\n", MAXT);
		return 2;
	}
	const char *force = getenv("PMEM_IS_PMEM_FORCE");
	mode = force && strcmp(force, "1") == 0 ? "flush" : "msync";
	int rc;
	if (strcmp(w, "kv") == 0)
		rc = run_kv(path, n);
	else if (strcmp(w, "open") == 0)
		rc = run_open(path, n, pool_mib);
	else if ((rc = run_floor(w, path, n, warm)) == 2)
		rc = run_tx(w, path, n, warm, threads);
	if (rc == 2)
		fprintf(stderr, "pmdk_peer: unknown workload %s\n", w);
	return rc;
}
