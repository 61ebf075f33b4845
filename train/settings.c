// train/settings.c: see settings.h.
#include "settings.h"
#include "../common.h"
#include <glob.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

typedef struct {
    char name[32];    // "--seed", or "--train-data files"
    char value[224];  // the value as text
} SettingItem;

// FNV-1a, 64 bits: a fingerprint for comparing records, not a guard against tampering
static uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
    const unsigned char* p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}
#define FNV_START 0xcbf29ce484222325ULL

// "3 files, 36072 bytes, sampled hash a1b2..." for the files a glob matches (what a rank would train on)
static void describe_files(const char* pattern, int whole_file, char* out, size_t n) {
    if (!pattern || !pattern[0]) { snprintf(out, n, "(none)"); return; }
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0) { snprintf(out, n, "no file"); return; }
    uint64_t h = FNV_START, total = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        struct stat st;
        // O_NONBLOCK: a FIFO matched by the glob must not hang here (the data loader refuses it later)
        int fd = open(g.gl_pathv[i], O_RDONLY | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            h = fnv1a(h, "unreadable", 10);
            if (fd >= 0) close(fd);
            continue;
        }
        uint64_t size = (uint64_t)st.st_size;
        total += size;
        h = fnv1a(h, &size, sizeof(size));
        // the whole file (a small tokenizer), or the header and 16 blocks spread over the file (shards may be
        // gigabytes; two hosts whose copies differ almost surely differ in some sampled block)
        unsigned char buf[4096];
        int blocks = whole_file ? -1 : 17;
        for (int b = 0; whole_file ? 1 : b < blocks; b++) {
            uint64_t at = whole_file ? (uint64_t)b * sizeof(buf) : b == 0 ? 0 : size / 16 * (uint64_t)(b - 1);
            if (at >= size && !(size == 0 && b == 0)) break;
            ssize_t k = pread(fd, buf, sizeof(buf), (off_t)at);
            if (k <= 0) break;
            h = fnv1a(h, buf, (size_t)k);
        }
        close(fd);
    }
    snprintf(out, n, "%zu file%s, %llu bytes, %s hash %016llx", g.gl_pathc, g.gl_pathc == 1 ? "" : "s",
             (unsigned long long)total, whole_file ? "content" : "sampled", (unsigned long long)h);
    globfree(&g);
}

// "DIR/TAIL" as a glob pattern that matches DIR literally (its *, ?, [ and \\ escaped)
static void glob_pattern_in(char* out, size_t n, const char* dir, const char* tail) {
    size_t k = 0;
    for (const char* p = dir ? dir : ""; *p && k + 3 < n; p++) {
        if (strchr("*?[]\\", *p)) out[k++] = '\\';
        out[k++] = *p;
    }
    snprintf(out + k, n - k, "/%s", tail);
}

static int build_record(const Flags* f, SettingItem** items_out) {
    SettingItem* items = xcalloc((size_t)num_flags + 6, sizeof(SettingItem));
    int n = 0;
    for (int i = 0; i < num_flags; i++) {
        const FlagSpec* s = &flag_specs[i];
        if (s->attrs & FLAG_PER_RANK) continue;
        snprintf(items[n].name, sizeof(items[n].name), "%s", s->name);
        flag_value_text(f, s, items[n].value, sizeof(items[n].value));
        n++;
    }
    snprintf(items[n].name, sizeof(items[n].name), "--train-data files");
    describe_files(f->train_data, 0, items[n++].value, sizeof(items[0].value));
    snprintf(items[n].name, sizeof(items[n].name), "--val-data files");
    describe_files(f->val_data, 0, items[n++].value, sizeof(items[0].value));
    snprintf(items[n].name, sizeof(items[n].name), "--tokenizer file");
    describe_files(f->tokenizer, 1, items[n++].value, sizeof(items[0].value));
    // --model as a config.json path (or an HF folder's): the same path must hold the same config (a preset name
    // matches no file on any rank)
    char pattern[2048];
    struct stat ms;
    const char* model = f->model ? f->model : "";
    int model_dir = stat(model, &ms) == 0 && S_ISDIR(ms.st_mode);
    if (model_dir) glob_pattern_in(pattern, sizeof(pattern), model, "config.json");
    else glob_pattern_in(pattern, sizeof(pattern), model, "");
    if (!model_dir) pattern[strlen(pattern) - 1] = 0;  // the path itself, without the "/" glob_pattern_in adds
    snprintf(items[n].name, sizeof(items[n].name), "--model file");
    describe_files(pattern, 1, items[n++].value, sizeof(items[0].value));
    // --init-from DIR: the same path on every rank must hold the same model (config.json and the index whole, the
    // safetensors sampled as the shards are)
    snprintf(items[n].name, sizeof(items[n].name), "--init-from json files");
    glob_pattern_in(pattern, sizeof(pattern), f->init_from, "*.json");
    describe_files(f->init_from ? pattern : NULL, 1, items[n++].value, sizeof(items[0].value));
    snprintf(items[n].name, sizeof(items[n].name), "--init-from safetensors");
    glob_pattern_in(pattern, sizeof(pattern), f->init_from, "*.safetensors");
    describe_files(f->init_from ? pattern : NULL, 0, items[n++].value, sizeof(items[0].value));
    *items_out = items;
    return n;
}

void settings_agree(Comm* c, const Flags* f) {
    if (c->world == 1) return;
    SettingItem* mine;
    int n = build_record(f, &mine);
    uint64_t h = fnv1a(fnv1a(FNV_START, &n, sizeof(n)), mine, (size_t)n * sizeof(SettingItem));
    // max and min of the hash's two halves over the ranks (each half is exact in a double)
    double v[4] = {(double)(h >> 32), (double)(h & 0xffffffffu), -(double)(h >> 32), -(double)(h & 0xffffffffu)};
    double saved = c->bytes_allreduce;
    comm_allreduce_max_f64(c, GROUP_WORLD, v, 4);
    if (v[0] == -v[2] && v[1] == -v[3]) { free(mine); c->bytes_allreduce = saved; return; }

    // they differ: find the first item (in table order) where some rank differs from rank 0, and the lowest such rank
    int n0 = n;
    comm_broadcast_bytes(c, GROUP_WORLD, &n0, sizeof(n0), 0);
    SettingItem* first = xcalloc((size_t)n0, sizeof(SettingItem));
    if (c->rank == 0) memcpy(first, mine, (size_t)n * sizeof(SettingItem));
    comm_broadcast_bytes(c, GROUP_WORLD, first, (size_t)n0 * sizeof(SettingItem), 0);
    int differ = -1;
    int common = n < n0 ? n : n0;
    for (int i = 0; i < common && differ < 0; i++)
        if (memcmp(&mine[i], &first[i], sizeof(SettingItem)) != 0) differ = i;
    if (differ < 0 && n != n0) differ = common;  // another build of the trainer, with another flag table
    double key = differ < 0 ? -1e300 : -((double)differ * c->world + c->rank);  // max of -key: the smallest key
    comm_allreduce_max_f64(c, GROUP_WORLD, &key, 1);
    long long k = (long long)-key;
    int item = (int)(k / c->world), who = (int)(k % c->world);
    SettingItem theirs = {{0}, {0}};
    if (c->rank == who) {
        if (item < n) theirs = mine[item];
        else snprintf(theirs.value, sizeof(theirs.value), "(this build has no such setting)");
    }
    comm_broadcast_bytes(c, GROUP_WORLD, &theirs, sizeof(theirs), who);
    const char* name = item < n0 ? first[item].name : theirs.name;
    const char* v0 = item < n0 ? first[item].value : "(this build has no such setting)";
    // rank 0 says it; the others wait for its abort, so the job ends with one line rather than one per rank
    if (c->rank != 0) comm_barrier(c);
    fatal("ranks disagree on %s (rank 0: %s, rank %d: %s); give every rank the same flags and data", name, v0, who,
          theirs.value);
}
