// train/hf.c: see hf.h.
//
// The conventions, checked against transformers' DeepSeek-V3 code (src/transformers/models/deepseek_v3/
// modeling_deepseek_v3.py and configuration_deepseek_v3.py):
//
// Names and shapes. Every HF tensor is a contiguous slice of our one parameter array (model/params.h), so export and
// import are copies. nn.Linear stores (out, in) and computes x W^T, as our matrices do. DeepseekV3Attention builds
// q_a_proj (q_lora, d), q_a_layernorm, q_b_proj (H*dqk, q_lora), kv_a_proj_with_mqa (kv_lora + rope, d),
// kv_a_layernorm (kv_lora), kv_b_proj (H*(nope+dv), kv_lora), o_proj (d, H*dv): our wdq, q_norm, wuq, wdkv, kv_norm,
// wukv, wo. Its forward views q as (B, S, H, dqk) and splits each head [nope | rope], splits kv_a's output
// [kv_lora | rope] (only the kv_lora part goes through kv_a_layernorm; the rope part is the one key shared by the
// heads), views kv_b's output as (B, S, H, nope + dv) and splits [k_nope | v]: the row orders of MODEL.md.
// DeepseekV3MLP is down(silu(gate(x)) * up(x)): our fused W1|W3 rows [0, f) are gate_proj, rows [f, 2f) up_proj,
// and W2 is down_proj. Layer l < first_k_dense_replace has a DeepseekV3MLP (our dense layer l); the others a
// DeepseekV3MoE (our MoE index l - Ld) with experts.E.*, shared_experts.* and gate (DeepseekV3TopkRouter:
// weight (E, d), buffer e_score_correction_bias (E)). DeepseekV3DecoderLayer: input_layernorm before attention,
// post_attention_layernorm before the MLP/MoE; the model ends with norm, then an untied lm_head.
//
// RoPE. Ours rotates interleaved pairs (x[2i], x[2i+1]) by t * theta^(-2i/rope). With config rope_interleave =
// true, apply_rotary_pos_emb_interleave first reorders each rope vector by view(..., d/2, 2).transpose(4, 3) into
// [x0, x2, x4, ... | x1, x3, x5, ...], then applies rotate_half with cos/sin = cat(freqs, freqs) of
// DeepseekV3RotaryEmbedding (inv_freq = theta^(-2i/d)): output i is x[2i] cos - x[2i+1] sin and output d/2 + i is
// x[2i+1] cos + x[2i] sin, the same rotation of the same pairs at the same frequency. Its output stores the pairs
// de-interleaved, but q and k get the same reordering and only their dot product is used, so the attention scores
// are ours exactly. Hence the rope rows of q_b_proj and kv_a_proj_with_mqa are stored as they are (no row
// permutation) and config.json says rope_interleave: true. Scores are scaled by qk_head_dim^-0.5 (no yarn mscale
// with rope_scaling null): our 1/sqrt(dqk).
//
// Routing. DeepseekV3TopkRouter.forward: router_logits = x W^T in fp32, scores = sigmoid; get_topk_indices selects on
// scores + e_score_correction_bias (with n_group = topk_group = 1 the group mask keeps every expert); the weights
// gather the unbiased scores, divide by their sum + 1e-20 (norm_topk_prob) and multiply by routed_scaling_factor:
// our g_k (the 1e-20 is below fp32 resolution of any sum of K sigmoids). DeepseekV3MoE.forward adds
// shared_experts(residuals), the MoE input, to the routed sum: our shared expert. The bias is a buffer, not a
// parameter, but it is saved (register_buffer is persistent) and it decides which experts a token uses, so it is
// always written as F32: a BF16 bias would move near-ties between experts and change the routing.
#include "hf.h"
#include "checkpoint.h"
#include "safetensors.h"
#include "atomic_file.h"
#include "../json.h"
#include "../model/config_json.h"
#include "../model/params.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// the name map

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    int is_bias;    // the router bias (e_score_correction_bias); else a slice of the parameters
    size_t offset;  // first element in the parameters (or the bias)
    size_t numel;
} HfTensor;

// Item `item` of tensor p (a layer, or layer x expert), row block `block` of a fused W1|W3 (0: W1 = gate, 1: W3 = up;
// -1: the whole item).
static void add_param(HfTensor* h, int* n, const ParamTensor* p, int item, int block, const char* fmt, ...) {
    HfTensor* t = &h[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    int rows = block < 0 ? p->rows : p->rows / p->row_blocks;
    t->offset = p->offset + (size_t)item * p->rows * p->cols + (size_t)(block < 0 ? 0 : block) * rows * p->cols;
    t->numel = (size_t)rows * p->cols;
    if (p->kind == PARAM_NORM) { t->ndim = 1; t->shape[0] = p->cols; }
    else { t->ndim = 2; t->shape[0] = rows; t->shape[1] = p->cols; }
}

// The HF tensors of config c in file order: the embedding, each layer (attention, then its MLP or MoE), the final
// norm, the head.
static int hf_tensor_list(const ModelConfig* c, HfTensor** out) {
    ParamTensor t[NUM_PARAM_TENSORS];
    param_layout(c, c->n_experts, t);
    int L = c->n_layers, Ld = c->n_dense_layers, E = c->n_experts;
    int cap = 3 + 14 * L + 3 * E * cfg_n_moe(c);  // per layer 9 attention tensors + 3 dense or 5 + 3E MoE ones
    HfTensor* h = xcalloc((size_t)cap, sizeof(HfTensor));
    int n = 0;
    add_param(h, &n, &t[P_WTE], 0, -1, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        add_param(h, &n, &t[P_ATTN_NORM], l, -1, "model.layers.%d.input_layernorm.weight", l);
        add_param(h, &n, &t[P_WDQ], l, -1, "model.layers.%d.self_attn.q_a_proj.weight", l);
        add_param(h, &n, &t[P_Q_NORM], l, -1, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        add_param(h, &n, &t[P_WUQ], l, -1, "model.layers.%d.self_attn.q_b_proj.weight", l);
        add_param(h, &n, &t[P_WDKV], l, -1, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
        add_param(h, &n, &t[P_KV_NORM], l, -1, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
        add_param(h, &n, &t[P_WUKV], l, -1, "model.layers.%d.self_attn.kv_b_proj.weight", l);
        add_param(h, &n, &t[P_WO], l, -1, "model.layers.%d.self_attn.o_proj.weight", l);
        add_param(h, &n, &t[P_FFN_NORM], l, -1, "model.layers.%d.post_attention_layernorm.weight", l);
        if (l < Ld) {
            add_param(h, &n, &t[P_DENSE_W13], l, 0, "model.layers.%d.mlp.gate_proj.weight", l);
            add_param(h, &n, &t[P_DENSE_W13], l, 1, "model.layers.%d.mlp.up_proj.weight", l);
            add_param(h, &n, &t[P_DENSE_W2], l, -1, "model.layers.%d.mlp.down_proj.weight", l);
            continue;
        }
        int m = l - Ld;
        add_param(h, &n, &t[P_ROUTER], m, -1, "model.layers.%d.mlp.gate.weight", l);
        HfTensor* b = &h[n++];
        snprintf(b->name, sizeof(b->name), "model.layers.%d.mlp.gate.e_score_correction_bias", l);
        b->ndim = 1;
        b->shape[0] = E;
        b->is_bias = 1;
        b->offset = (size_t)m * E;
        b->numel = (size_t)E;
        add_param(h, &n, &t[P_SHARED_W13], m, 0, "model.layers.%d.mlp.shared_experts.gate_proj.weight", l);
        add_param(h, &n, &t[P_SHARED_W13], m, 1, "model.layers.%d.mlp.shared_experts.up_proj.weight", l);
        add_param(h, &n, &t[P_SHARED_W2], m, -1, "model.layers.%d.mlp.shared_experts.down_proj.weight", l);
        for (int e = 0; e < E; e++) {
            add_param(h, &n, &t[P_EXPERT_W13], m * E + e, 0, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
            add_param(h, &n, &t[P_EXPERT_W13], m * E + e, 1, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
            add_param(h, &n, &t[P_EXPERT_W2], m * E + e, -1, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
        }
    }
    add_param(h, &n, &t[P_FINAL_NORM], 0, -1, "model.norm.weight");
    add_param(h, &n, &t[P_LM_HEAD], 0, -1, "lm_head.weight");
    if (n > cap) fatal("hf: the tensor list overflowed (%d > %d)", n, cap);
    *out = h;
    return n;
}

// Tensors a DeepseekV3ForCausalLM file may hold that carry nothing of the model: older transformers releases saved
// the rotary embedding's inv_freq buffer, which config.json's rope_theta determines. (DeepseekV3RotaryEmbedding
// registers it with persistent=False now, so current files do not have it.)
static int ignorable(const char* name) {
    const char* tail = ".rotary_emb.inv_freq";
    size_t n = strlen(name), k = strlen(tail);
    return n >= k && !strcmp(name + n - k, tail);
}

// ----------------------------------------------------------------------------
// small file helpers

static void write_text_file(const char* path, const char* text) {
    AtomicFile af;
    atomic_open(&af, path, "--export-hf");
    atomic_write(&af, text, strlen(text));
    atomic_close(&af);
}

static void copy_file(const char* from, const char* to) {
    FILE* in = fopen(from, "rb");
    if (!in) fatal("--export-hf: cannot read %s: %s", from, strerror(errno));
    AtomicFile af;
    atomic_open(&af, to, "--export-hf");
    char buf[1 << 16];
    size_t k;
    while ((k = fread(buf, 1, sizeof(buf), in)) > 0) atomic_write(&af, buf, k);
    if (ferror(in)) fatal("--export-hf: reading %s failed", from);
    fclose(in);
    atomic_close(&af);
}

static long long file_size(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

// the files an export writes: the only ones --overwrite may replace
static int export_file_name(const char* name) {
    static const char* const fixed[] = {"config.json", "generation_config.json", "model.safetensors",
        "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", NULL};
    for (int i = 0; fixed[i]; i++)
        if (!strcmp(name, fixed[i])) return 1;
    int a, b;
    char again[64];
    if (sscanf(name, "model-%5d-of-%5d.", &a, &b) != 2) return 0;
    snprintf(again, sizeof(again), "model-%05d-of-%05d.safetensors", a, b);
    return !strcmp(again, name);
}

// 0: dir does not exist; 1: an empty directory; 2: a directory of an earlier export (with --overwrite). Fatal when
// it is something else, or not empty without --overwrite.
static int check_target(const char* dir, int overwrite) {
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno == ENOENT) return 0;
        fatal("flag --export-hf %s: %s", dir, strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode)) fatal("flag --export-hf %s exists and is not a directory", dir);
    DIR* d = opendir(dir);
    if (!d) fatal("flag --export-hf %s: cannot read the directory: %s", dir, strerror(errno));
    int entries = 0;
    struct dirent* e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        entries++;
        if (!overwrite) {
            closedir(d);
            fatal("flag --export-hf %s exists and is not empty; pass --overwrite to replace an earlier export", dir);
        }
        if (!export_file_name(e->d_name)) {
            char name[512];
            snprintf(name, sizeof(name), "%s", e->d_name);  // (the entry goes with closedir)
            closedir(d);
            fatal("flag --export-hf %s: --overwrite replaces an earlier export only, and %s/%s is not a file an export "
                  "writes", dir, dir, name);
        }
    }
    closedir(d);
    return entries ? 2 : 1;
}

static void remove_export_dir(const char* dir) {
    DIR* d = opendir(dir);
    if (!d) return;
    struct dirent* e;
    char path[2048];
    while ((e = readdir(d))) {
        if (!export_file_name(e->d_name)) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

// ----------------------------------------------------------------------------
// export

static const char* const st_meta[] = {"format", "pt"};  // transformers' loader checks this key

void hf_export(const Flags* f, Comm* comm) {
    if (comm->world > 1) {
        if (comm->rank != 0) comm_barrier(comm);  // rank 0's line ends the job
        fatal("flag --export-hf runs in one process, this job has %d ranks: run it without mpirun", comm->world);
    }
    if (!f->out) fatal("flag --export-hf needs --out RUN: the run directory whose checkpoint it writes");
    if (f->init_from || f->resume || f->replay || f->eval || f->generate)
        fatal("flag --export-hf writes a checkpoint of --out and exits; it conflicts with %s",
              f->init_from ? "--init-from" : f->resume ? "--resume" : f->replay ? "--replay" : f->eval ? "--eval" : "--generate");
    char dir[900];
    if (strlen(f->export_hf) >= sizeof(dir) - 40) fatal("flag --export-hf: the path is longer than %zu characters", sizeof(dir) - 40);
    snprintf(dir, sizeof(dir), "%s", f->export_hf);
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dir[--dl] = 0;
    if (!dl) fatal("flag --export-hf is empty");
    int bf16 = !strcmp(f->dtype, "bf16");

    CheckpointModel cm;
    char why[1536];
    if (!checkpoint_read_model(f->out, f->step, &cm, why, sizeof(why))) fatal("flag --export-hf: checkpoint: %s", why);
    const ModelConfig* c = &cm.cfg;
    int existing = check_target(dir, f->overwrite);

    // everything goes into DIR.tmp-PID first and is renamed into place at the end: a failure leaves no DIR
    char tmp[1024], path[2048];
    snprintf(tmp, sizeof(tmp), "%s.tmp-%ld", dir, (long)getpid());
    mkdir_parents(tmp);
    if (mkdir(tmp, 0755) != 0) fatal("flag --export-hf: cannot create %s: %s", tmp, strerror(errno));

    HfTensor* ht;
    int n = hf_tensor_list(c, &ht);
    StWriteTensor* w = xcalloc((size_t)n, sizeof(StWriteTensor));
    for (int i = 0; i < n; i++) {
        w[i].name = ht[i].name;
        w[i].dtype = ht[i].is_bias || !bf16 ? ST_F32 : ST_BF16;  // the bias decides routing: always F32
        w[i].ndim = ht[i].ndim;
        w[i].shape[0] = ht[i].shape[0];
        w[i].shape[1] = ht[i].shape[1];
        w[i].data = (ht[i].is_bias ? cm.bias : cm.params) + ht[i].offset;
    }
    // shards: tensors in file order, a new file when the next tensor would take this one past --max-shard-size (a
    // tensor larger than that gets a file of its own), as transformers' save_pretrained does
    int* first = xmalloc((size_t)(n + 1) * sizeof(int));
    int n_shards = 0;
    uint64_t cur = 0, total = 0;
    for (int i = 0; i < n; i++) {
        uint64_t b = st_tensor_bytes(&w[i]);
        if (n_shards == 0 || (cur > 0 && cur + b > (uint64_t)f->max_shard_size)) { first[n_shards++] = i; cur = 0; }
        cur += b;
        total += b;
    }
    first[n_shards] = n;
    if (n_shards > 99999) fatal("flag --max-shard-size %lld gives %d files; at most 99999", f->max_shard_size, n_shards);
    char (*names)[48] = xcalloc((size_t)n_shards, sizeof(*names));
    for (int s = 0; s < n_shards; s++) {
        if (n_shards == 1) snprintf(names[s], sizeof(names[s]), "model.safetensors");
        else snprintf(names[s], sizeof(names[s]), "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        snprintf(path, sizeof(path), "%s/%s", tmp, names[s]);
        st_write(path, w + first[s], first[s + 1] - first[s], st_meta, 1);
    }
    if (n_shards > 1) {  // the index: {"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}
        size_t cap = 256 + (size_t)n * 160, len = 0;
        char* idx = xmalloc(cap);
        len += (size_t)snprintf(idx + len, cap - len, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n",
                                (unsigned long long)total);
        for (int s = 0; s < n_shards; s++)
            for (int i = first[s]; i < first[s + 1]; i++)
                len += (size_t)snprintf(idx + len, cap - len, "    \"%s\": \"%s\"%s\n", ht[i].name, names[s], i + 1 < n ? "," : "");
        snprintf(idx + len, cap - len, "  }\n}\n");
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", tmp);
        write_text_file(path, idx);
        free(idx);
    }
    char* cfg_json = config_to_json(c, bf16 ? "bfloat16" : "float32");
    snprintf(path, sizeof(path), "%s/config.json", tmp);
    write_text_file(path, cfg_json);
    free(cfg_json);
    snprintf(path, sizeof(path), "%s/generation_config.json", tmp);
    write_text_file(path, "{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"do_sample\": true\n}\n");

    // the SentencePiece model beside --tokenizer (data/prepare.py writes tokenizer.model next to tokenizer.bin)
    char tok_model[1024];
    snprintf(tok_model, sizeof(tok_model), "%s", f->tokenizer);
    char* slash = strrchr(tok_model, '/');
    if (slash) snprintf(slash + 1, sizeof(tok_model) - (size_t)(slash + 1 - tok_model), "tokenizer.model");
    else snprintf(tok_model, sizeof(tok_model), "tokenizer.model");
    struct stat sb;
    int have_tok = stat(tok_model, &sb) == 0 && S_ISREG(sb.st_mode);
    if (have_tok) {
        snprintf(path, sizeof(path), "%s/tokenizer.model", tmp);
        copy_file(tok_model, path);
        char text[1024];
        snprintf(text, sizeof(text),
                 "{\n  \"tokenizer_class\": \"LlamaTokenizer\",\n  \"legacy\": true,\n  \"add_bos_token\": true,\n"
                 "  \"add_eos_token\": false,\n  \"add_prefix_space\": false,\n  \"bos_token\": \"<s>\",\n"
                 "  \"eos_token\": \"</s>\",\n  \"unk_token\": \"<unk>\",\n  \"pad_token\": null,\n"
                 "  \"model_max_length\": %d,\n  \"clean_up_tokenization_spaces\": false\n}\n", c->seq_len);
        snprintf(path, sizeof(path), "%s/tokenizer_config.json", tmp);
        write_text_file(path, text);
        snprintf(path, sizeof(path), "%s/special_tokens_map.json", tmp);
        write_text_file(path, "{\n  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"unk_token\": \"<unk>\"\n}\n");
    } else {
        fprintf(stderr, "warning: --export-hf: no tokenizer.model beside --tokenizer %s (looked for %s); %s gets no "
                "tokenizer files\n", f->tokenizer, tok_model, dir);
    }
    fsync_dir(tmp);

    // into place: an empty DIR is replaced by the rename itself; an earlier export is moved aside first
    char old[1100];
    snprintf(old, sizeof(old), "%s.old-%ld", dir, (long)getpid());
    if (existing == 2 && rename(dir, old) != 0) fatal("flag --export-hf: cannot move the earlier %s aside: %s", dir, strerror(errno));
    if (rename(tmp, dir) != 0) fatal("flag --export-hf: rename %s -> %s failed: %s", tmp, dir, strerror(errno));
    if (existing == 2) remove_export_dir(old);
    char parent[1024];
    snprintf(parent, sizeof(parent), "%s", dir);
    slash = strrchr(parent, '/');
    if (slash && slash != parent) *slash = 0; else snprintf(parent, sizeof(parent), slash ? "/" : ".");
    fsync_dir(parent);

    printf("exported step %d of %s (model %s, %zu parameters + %zu router-bias entries, %s) to %s:\n", cm.step, f->out,
           c->name, cm.n, cm.nb, bf16 ? "bf16 (router bias fp32)" : "fp32", dir);
    for (int s = 0; s < n_shards; s++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[s]);
        printf("  %s (%d tensors, %lld bytes)\n", path, first[s + 1] - first[s], file_size(path));
    }
    const char* extra[] = {"model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.model",
                           "tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, extra[i]);
        if (file_size(path) >= 0) printf("  %s (%lld bytes)\n", path, file_size(path));
    }
    free(names);
    free(first);
    free(w);
    free(ht);
    checkpoint_model_free(&cm);
}

// ----------------------------------------------------------------------------
// import

void hf_read_config(const char* dir, ModelConfig* cfg) {
    char path[1024], why[1024];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (!config_from_json_file(cfg, path, why, sizeof(why))) fatal("--init-from: %s", why);
    config_name_from_path(cfg->name, sizeof(cfg->name), dir);
}

// weight_map entries sorted by tensor name, for a binary search
typedef struct {
    const char* name;
    int file;
} MapEntry;

static int cmp_map(const void* a, const void* b) { return strcmp(((const MapEntry*)a)->name, ((const MapEntry*)b)->name); }

static const MapEntry* find_map(const MapEntry* m, int n, const char* name) {
    MapEntry key = {name, 0};
    return bsearch(&key, m, (size_t)n, sizeof(MapEntry), cmp_map);
}

static int cmp_hf_name(const void* a, const void* b) { return strcmp(((const HfTensor*)a)->name, ((const HfTensor*)b)->name); }

#define MAX_INDEX_BYTES (256u << 20)

// The index's weight_map: files[] gets each distinct file name once; map[] each tensor with its file's index.
static int read_index(const char* path, JsonDoc* doc, char*** files_out, MapEntry** map_out) {
    FILE* fp = fopen(path, "rb");
    if (!fp) fatal("--init-from: %s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) fatal("--init-from: %s: not a regular file", path);
    if ((uint64_t)sb.st_size > MAX_INDEX_BYTES) fatal("--init-from: %s: %lld bytes, more than an index may have", path, (long long)sb.st_size);
    size_t len = (size_t)sb.st_size;
    char* text = xmalloc(len + 1);
    if (len && fread(text, 1, len, fp) != len) fatal("--init-from: %s: read failed", path);
    fclose(fp);
    char why[512];
    if (!json_parse(doc, text, len, JSON_MAX_DEPTH, why, sizeof(why))) fatal("--init-from: %s: %s", path, why);
    free(text);
    const JsonValue* wm = json_get(doc->root, "weight_map");
    if (doc->root->type != JSON_OBJECT || !wm || wm->type != JSON_OBJECT)
        fatal("--init-from: %s: no \"weight_map\" object (not a safetensors index)", path);
    char** files = xcalloc((size_t)wm->n + 1, sizeof(char*));
    MapEntry* map = xcalloc((size_t)wm->n + 1, sizeof(MapEntry));
    int nf = 0;
    for (int i = 0; i < wm->n; i++) {
        const JsonValue* v = &wm->items[i];
        if (v->type != JSON_STRING) fatal("--init-from: %s: weight_map['%s'] is %s, not a file name", path, wm->keys[i], json_type_name(v->type));
        // a plain file name in DIR: nothing that could reach outside it
        if (!v->str[0] || strchr(v->str, '/') || !strcmp(v->str, ".") || !strcmp(v->str, ".."))
            fatal("--init-from: %s: weight_map['%s'] = \"%s\" is not a file name inside the directory", path, wm->keys[i], v->str);
        int k = 0;
        while (k < nf && strcmp(files[k], v->str)) k++;
        if (k == nf) files[nf++] = v->str;
        map[i].name = wm->keys[i];
        map[i].file = k;
    }
    qsort(map, (size_t)wm->n, sizeof(MapEntry), cmp_map);
    *files_out = files;
    *map_out = map;
    return nf;
}

void hf_load_weights(const char* dir, const ModelConfig* cfg, float* params, float* bias) {
    char single[1024], index[1024], why[2048];
    snprintf(single, sizeof(single), "%s/model.safetensors", dir);
    snprintf(index, sizeof(index), "%s/model.safetensors.index.json", dir);
    int has_single = access(single, F_OK) == 0, has_index = access(index, F_OK) == 0;
    if (has_single && has_index)
        fatal("--init-from %s holds both model.safetensors and model.safetensors.index.json; which weights are meant is "
              "unclear: remove one", dir);
    if (!has_single && !has_index)
        fatal("--init-from %s: neither model.safetensors nor model.safetensors.index.json is there", dir);

    JsonDoc doc = {0};
    char** file_names = NULL;
    MapEntry* map = NULL;
    int n_map = 0, n_files = 1;
    if (has_index) {
        n_files = read_index(index, &doc, &file_names, &map);
        n_map = json_get(doc.root, "weight_map")->n;
        if (n_files == 0) fatal("--init-from: %s: the weight_map is empty", index);
    }
    StFile* files = xcalloc((size_t)n_files, sizeof(StFile));
    for (int k = 0; k < n_files; k++) {
        char path[1300];
        if (has_index) snprintf(path, sizeof(path), "%s/%s", dir, file_names[k]);
        else snprintf(path, sizeof(path), "%s", single);
        if (!st_open(&files[k], path, why, sizeof(why))) fatal("--init-from: %s", why);
    }

    HfTensor* ht;
    int n = hf_tensor_list(cfg, &ht);
    // every tensor of the model: there, in the file the index names, with its shape, F32 or BF16, finite
    for (int i = 0; i < n; i++) {
        const HfTensor* t = &ht[i];
        int k = 0;
        if (has_index) {
            const MapEntry* me = find_map(map, n_map, t->name);
            if (!me) fatal("--init-from: %s: tensor '%s' is missing (not in the weight_map)", index, t->name);
            k = me->file;
        }
        const StFile* sf = &files[k];
        const StEntry* e = st_find(sf, t->name);
        if (!e) fatal("--init-from: %s: tensor '%s' is missing", sf->path, t->name);
        if (e->dtype != ST_F32 && e->dtype != ST_BF16)
            fatal("--init-from: %s: tensor '%s' has dtype %s; only F32 and BF16 are read", sf->path, t->name, st_dtype_name(e->dtype));
        int same = e->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = e->shape[d] == t->shape[d];
        if (!same) {
            char got[160] = "", want[64];
            size_t q = 0;
            for (int d = 0; d < e->ndim && q < sizeof(got) - 24; d++)
                q += (size_t)snprintf(got + q, sizeof(got) - q, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
            if (t->ndim == 1) snprintf(want, sizeof(want), "%lld", (long long)t->shape[0]);
            else snprintf(want, sizeof(want), "%lld, %lld", (long long)t->shape[0], (long long)t->shape[1]);
            fatal("--init-from: %s: tensor '%s' has shape [%s], the model of %s/config.json needs [%s]", sf->path,
                  t->name, got, dir, want);
        }
        float* dst = (t->is_bias ? bias : params) + t->offset;
        if (!st_read_f32(sf, e, dst, why, sizeof(why))) fatal("--init-from: %s", why);
        for (size_t j = 0; j < t->numel; j++)
            if (!isfinite(dst[j])) fatal("--init-from: %s: tensor '%s' element %zu is not finite (%g)", sf->path, t->name, j, dst[j]);
    }
    // and nothing else: a tensor of another model (MTP layers, more experts or layers) means another config
    qsort(ht, (size_t)n, sizeof(HfTensor), cmp_hf_name);
    for (int k = 0; k < n_files; k++) {
        const StFile* sf = &files[k];
        for (int i = 0; i < sf->n; i++) {
            const char* name = sf->entries[i].name;
            HfTensor key;
            snprintf(key.name, sizeof(key.name), "%s", name);
            int known = strlen(name) < sizeof(key.name) && bsearch(&key, ht, (size_t)n, sizeof(HfTensor), cmp_hf_name);
            if (!known && ignorable(name)) continue;
            if (!known)
                fatal("--init-from: %s: tensor '%s' is not part of the model %s/config.json describes", sf->path, name, dir);
            if (has_index) {
                const MapEntry* me = find_map(map, n_map, name);
                if (!me || me->file != k)
                    fatal("--init-from: %s: tensor '%s' is here, but %s puts it %s%s", sf->path, name, index,
                          me ? "in " : "nowhere", me ? file_names[me->file] : "");
            }
        }
    }
    for (int i = 0; i < n_map; i++)
        if (!st_find(&files[map[i].file], map[i].name))
            fatal("--init-from: %s: the index puts tensor '%s' in %s, which does not hold it", index, map[i].name,
                  files[map[i].file].path);
    for (int k = 0; k < n_files; k++) st_close(&files[k]);
    free(files);
    free(ht);
    free(file_names);
    free(map);
    if (has_index) json_free(&doc);
}
