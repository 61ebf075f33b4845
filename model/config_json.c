// model/config_json.c: see config_json.h. Two tables: the fields that carry our config's numbers, and the fields
// whose value selects a variant of DeepSeek-V3 (we implement one value of each; export writes it, import insists on
// it). Names and meanings follow transformers' DeepseekV3Config (configuration_deepseek_v3.py) and the fields the
// DeepSeek-V3 release's own config.json adds (scoring_func, topk_method, moe_layer_freq, num_nextn_predict_layers).
#include "config_json.h"
#include "../json.h"
#include "../common.h"
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <sys/stat.h>

// ---- the numbers: config.json key <-> ModelConfig field
typedef struct {
    const char* key;
    int is_float;
    size_t offset;
    const char* ours;  // the ModelConfig field's name (config_validate's messages use it)
} NumField;

#define INT_FIELD(key, f) {key, 0, offsetof(ModelConfig, f), #f}
#define FLOAT_FIELD(key, f) {key, 1, offsetof(ModelConfig, f), #f}
static const NumField num_fields[] = {
    INT_FIELD("vocab_size", vocab_size),
    INT_FIELD("hidden_size", d_model),
    INT_FIELD("num_hidden_layers", n_layers),
    INT_FIELD("first_k_dense_replace", n_dense_layers),
    INT_FIELD("num_attention_heads", n_heads),
    INT_FIELD("q_lora_rank", q_lora),
    INT_FIELD("kv_lora_rank", kv_lora),
    INT_FIELD("qk_nope_head_dim", qk_nope),
    INT_FIELD("qk_rope_head_dim", qk_rope),
    INT_FIELD("v_head_dim", v_head),
    INT_FIELD("n_routed_experts", n_experts),
    INT_FIELD("num_experts_per_tok", top_k),
    INT_FIELD("moe_intermediate_size", moe_hidden),
    INT_FIELD("intermediate_size", dense_hidden),
    INT_FIELD("max_position_embeddings", seq_len),
    FLOAT_FIELD("routed_scaling_factor", routed_scale),
    FLOAT_FIELD("rope_theta", rope_theta),
    FLOAT_FIELD("rms_norm_eps", norm_eps),
};
#define N_NUM_FIELDS (int)(sizeof(num_fields) / sizeof(num_fields[0]))

static int* int_at(ModelConfig* c, const NumField* f) { return (int*)((char*)c + f->offset); }
static float* float_at(ModelConfig* c, const NumField* f) { return (float*)((char*)c + f->offset); }
static int int_of(const ModelConfig* c, const NumField* f) { return *(const int*)((const char*)c + f->offset); }
static float float_of(const ModelConfig* c, const NumField* f) { return *(const float*)((const char*)c + f->offset); }

// ---- the variant selectors: the one value we implement
typedef enum { FIX_INT, FIX_BOOL, FIX_STRING, FIX_NULL, FIX_ABSENT } FixKind;
typedef struct {
    const char* key;
    FixKind kind;
    int value;            // FIX_INT, FIX_BOOL
    const char* str;      // FIX_STRING
    const char* what;     // what another value would ask for
    const char* absent;   // NULL: absence means our value (HF's default); else why absence is refused
} FixedField;

static const FixedField fixed_fields[] = {
    {"model_type", FIX_STRING, 0, "deepseek_v3", "another architecture", NULL},
    {"n_group", FIX_INT, 1, NULL, "grouped expert routing", "transformers' default is 8 groups"},
    {"topk_group", FIX_INT, 1, NULL, "grouped expert routing", "transformers' default is 4 groups"},
    {"n_shared_experts", FIX_INT, 1, NULL, "another number of shared experts", NULL},
    {"num_nextn_predict_layers", FIX_INT, 0, NULL, "multi-token-prediction layers", NULL},
    {"moe_layer_freq", FIX_INT, 1, NULL, "dense layers between the MoE layers", NULL},
    {"scoring_func", FIX_STRING, 0, "sigmoid", "another router scoring function", NULL},
    {"topk_method", FIX_STRING, 0, "noaux_tc", "another expert selection", NULL},
    {"norm_topk_prob", FIX_BOOL, 1, NULL, "unnormalised routing weights", NULL},
    {"tie_word_embeddings", FIX_BOOL, 0, NULL, "an LM head tied to the embedding", NULL},
    {"hidden_act", FIX_STRING, 0, "silu", "another activation", NULL},
    {"attention_bias", FIX_BOOL, 0, NULL, "attention projections with biases", NULL},
    {"rope_interleave", FIX_BOOL, 1, NULL, "RoPE on the two halves of the rope dims instead of interleaved pairs", NULL},
    {"rope_scaling", FIX_NULL, 0, NULL, "RoPE scaling (yarn)", NULL},
    {"quantization_config", FIX_ABSENT, 0, NULL, "quantized (FP8) weights", NULL},
};
#define N_FIXED_FIELDS (int)(sizeof(fixed_fields) / sizeof(fixed_fields[0]))

// a JSON value in a few characters, for messages
static void show(const JsonValue* v, char* out, size_t n) {
    switch (v->type) {
    case JSON_NULL: snprintf(out, n, "null"); break;
    case JSON_BOOL: snprintf(out, n, "%s", v->boolean ? "true" : "false"); break;
    case JSON_NUMBER:
        if (v->is_int) snprintf(out, n, "%lld", (long long)v->integer);
        else {
            snprintf(out, n, "%.17g", v->number);
            if (!strpbrk(out, ".eEn")) strncat(out, ".0", n - strlen(out) - 1);  // 4096.0 is not the integer 4096
        }
        break;
    case JSON_STRING: snprintf(out, n, "\"%.60s\"", v->str); break;
    case JSON_ARRAY: snprintf(out, n, "an array"); break;
    case JSON_OBJECT: snprintf(out, n, "an object"); break;
    }
}

static int check_fixed(const JsonValue* root, const FixedField* f, const char* src, char* why, size_t n) {
    const JsonValue* v = json_get(root, f->key);
    if (!v) {
        if (f->absent) return fail_why(why, n, src, "field '%s' is missing (%s; this trainer implements only %s = %d)", f->key,
                                  f->absent, f->key, f->value);
        return 1;
    }
    char got[96];
    show(v, got, sizeof(got));
    static const JsonType want_type[] = {[FIX_INT] = JSON_NUMBER, [FIX_BOOL] = JSON_BOOL, [FIX_STRING] = JSON_STRING,
                                         [FIX_NULL] = JSON_NULL};
    if (f->kind == FIX_ABSENT)
        return fail_why(why, n, src, "field '%s' is present, which asks for %s: not supported", f->key, f->what);
    if (f->kind == FIX_NULL) {
        if (v->type == JSON_NULL) return 1;
        return fail_why(why, n, src, "field '%s' is %s, which asks for %s: not supported (only null)", f->key, got, f->what);
    }
    if (v->type != want_type[f->kind] || (f->kind == FIX_INT && !v->is_int))
        return fail_why(why, n, src, "field '%s' must be %s, got %s", f->key,
                   f->kind == FIX_INT ? "an integer" : json_type_name(want_type[f->kind]), got);
    int same = f->kind == FIX_INT ? v->integer == f->value
             : f->kind == FIX_BOOL ? v->boolean == f->value
             : !strcmp(v->str, f->str);
    if (same) return 1;
    char want[64];
    if (f->kind == FIX_STRING) snprintf(want, sizeof(want), "\"%s\"", f->str);
    else if (f->kind == FIX_BOOL) snprintf(want, sizeof(want), "%s", f->value ? "true" : "false");
    else snprintf(want, sizeof(want), "%d", f->value);
    return fail_why(why, n, src, "field '%s' is %s, which asks for %s: not supported (this trainer implements only %s)",
               f->key, got, f->what, want);
}

// a config.json float as our float: positive and finite as a float (1e39 is a finite double but an infinite float)
static int positive_float(const JsonValue* v, const char* key, float* out, const char* src, char* why, size_t n) {
    char got[96];
    show(v, got, sizeof(got));
    if (v->type != JSON_NUMBER) return fail_why(why, n, src, "field '%s' must be a number, got %s", key, got);
    if (!isfinite(v->number_f))
        return fail_why(why, n, src, "field '%s' = %s is beyond the range of a 32-bit float", key, got);
    if (!(v->number_f > 0)) return fail_why(why, n, src, "field '%s' = %s must be a positive float", key, got);
    *out = v->number_f;
    return 1;
}

// rope_theta: the top-level field (DeepseekV3Config before transformers 5), or rope_parameters.rope_theta (after),
// whose rope_type must be the plain one
static int read_rope_theta(const JsonValue* root, float* theta, const char* src, char* why, size_t n) {
    const JsonValue* top = json_get(root, "rope_theta");
    const JsonValue* rp = json_get(root, "rope_parameters");
    const JsonValue* inner = NULL;
    if (rp && rp->type != JSON_NULL) {
        if (rp->type != JSON_OBJECT) return fail_why(why, n, src, "field 'rope_parameters' must be an object or null, got %s", json_type_name(rp->type));
        const JsonValue* type = json_get(rp, "rope_type");
        if (type && (type->type != JSON_STRING || strcmp(type->str, "default")))
            return fail_why(why, n, src, "field 'rope_parameters.rope_type' is not \"default\": RoPE scaling is not supported");
        inner = json_get(rp, "rope_theta");
        if (inner && inner->type != JSON_NUMBER)
            return fail_why(why, n, src, "field 'rope_parameters.rope_theta' must be a number, got %s", json_type_name(inner->type));
    }
    if (top && top->type != JSON_NUMBER) return fail_why(why, n, src, "field 'rope_theta' must be a number, got %s", json_type_name(top->type));
    if (!top && !inner) return fail_why(why, n, src, "field 'rope_theta' is missing (nor is it in rope_parameters)");
    if (top && inner && top->number_f != inner->number_f)
        return fail_why(why, n, src, "fields 'rope_theta' (%g) and 'rope_parameters.rope_theta' (%g) disagree", top->number, inner->number);
    return positive_float(top ? top : inner, top ? "rope_theta" : "rope_parameters.rope_theta", theta, src, why, n);
}

static int read_config(ModelConfig* c, const JsonValue* root, const char* src, char* why, size_t n) {
    if (root->type != JSON_OBJECT) return fail_why(why, n, src, "the file holds %s, not a JSON object", json_type_name(root->type));
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < N_NUM_FIELDS; i++) {
        const NumField* f = &num_fields[i];
        if (!strcmp(f->key, "rope_theta")) {
            if (!read_rope_theta(root, float_at(c, f), src, why, n)) return 0;
            continue;
        }
        const JsonValue* v = json_get(root, f->key);
        if (!v) return fail_why(why, n, src, "field '%s' is missing", f->key);
        char got[96];
        show(v, got, sizeof(got));
        if (!strcmp(f->key, "q_lora_rank") && v->type == JSON_NULL)
            return fail_why(why, n, src, "field 'q_lora_rank' is null: attention without a query latent (q_proj) is not "
                       "supported");
        if (f->is_float) {
            if (!positive_float(v, f->key, float_at(c, f), src, why, n)) return 0;
        } else {
            if (v->type != JSON_NUMBER || !v->is_int)
                return fail_why(why, n, src, "field '%s' must be an integer, got %s", f->key, got);
            if (v->integer < 0 || v->integer > 0x7fffffff)
                return fail_why(why, n, src, "field '%s' = %s is outside [0, 2^31)", f->key, got);
            *int_at(c, f) = (int)v->integer;
        }
    }
    for (int i = 0; i < N_FIXED_FIELDS; i++)
        if (!check_fixed(root, &fixed_fields[i], src, why, n)) return 0;
    // every head has its own key and value (MLA): a grouped-query value would not describe this model
    const JsonValue* kvh = json_get(root, "num_key_value_heads");
    if (kvh && kvh->type != JSON_NULL) {
        if (kvh->type != JSON_NUMBER || !kvh->is_int)
            return fail_why(why, n, src, "field 'num_key_value_heads' must be an integer, got %s", json_type_name(kvh->type));
        if (kvh->integer != c->n_heads)
            return fail_why(why, n, src, "field 'num_key_value_heads' = %lld must equal num_attention_heads = %d (grouped-query "
                       "attention is not supported)", (long long)kvh->integer, c->n_heads);
    }
    // dropout would make the HF model's training differ from ours; inference ignores it, but say it rather than drop it
    const JsonValue* drop = json_get(root, "attention_dropout");
    if (drop && !(drop->type == JSON_NUMBER && drop->number == 0.0))
        return fail_why(why, n, src, "field 'attention_dropout' must be 0 (this trainer has no dropout)");
    // transformers' DeepseekV3Attention builds q_a_layernorm and kv_a_layernorm as DeepseekV3RMSNorm(rank), whose eps
    // is its default 1e-6 whatever rms_norm_eps says; this model uses one epsilon for every norm, so any other value
    // would make the two models differ in those two norms
    if (c->norm_eps != 1e-6f) {
        char got[96];
        show(json_get(root, "rms_norm_eps"), got, sizeof(got));
        return fail_why(why, n, src, "field 'rms_norm_eps' = %s: only 1e-6 is supported (transformers' DeepSeek-V3 code uses "
                   "1e-6 in q_a_layernorm and kv_a_layernorm whatever this field says; this model has one epsilon)", got);
    }
    char msg[256];
    if (!config_validate(c, msg, sizeof(msg))) {
        // config_validate names our fields ("qk_rope = 7 must be even ..."): name the config.json field it starts with
        for (int i = 0; i < N_NUM_FIELDS; i++) {
            size_t k = strlen(num_fields[i].ours);
            if (!strncmp(msg, num_fields[i].ours, k) && (msg[k] == ' ' || msg[k] == ','))
                return fail_why(why, n, src, "field '%s': unsupported value: %s", num_fields[i].key, msg);
        }
        return fail_why(why, n, src, "unsupported config: %s", msg);
    }
    return 1;
}

int config_from_json_text(ModelConfig* c, const char* text, size_t len, const char* src, char* why, size_t why_n) {
    JsonDoc doc;
    char msg[512];
    if (!json_parse(&doc, text, len, JSON_MAX_DEPTH, msg, sizeof(msg))) return fail_why(why, why_n, src, "%s", msg);
    int ok = read_config(c, doc.root, src, why, why_n);
    json_free(&doc);
    return ok;
}

#define MAX_CONFIG_BYTES (16u << 20)

int config_from_json_file(ModelConfig* c, const char* path, char* why, size_t why_n) {
    FILE* f = fopen(path, "rb");
    if (!f) return fail_why(why, why_n, path, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) { fclose(f); return fail_why(why, why_n, path, "not a regular file"); }
    if ((uint64_t)sb.st_size > MAX_CONFIG_BYTES) {
        fclose(f);
        return fail_why(why, why_n, path, "%lld bytes; a config.json of more than %u bytes is refused", (long long)sb.st_size, MAX_CONFIG_BYTES);
    }
    size_t len = (size_t)sb.st_size;
    char* text = xmalloc(len + 1);
    if (len && fread(text, 1, len, f) != len) {
        free(text);
        fclose(f);
        return fail_why(why, why_n, path, "read failed");
    }
    fclose(f);
    int ok = config_from_json_text(c, text, len, path, why, why_n);
    free(text);
    return ok;
}

// ---- writing

// The shortest decimal that reads back as exactly x (as a float), written so that Python reads a float ("50000.0")
static void float_text(float x, char* out, size_t n) {
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, n, "%.*g", digits, (double)x);
        if (strtof(out, NULL) == x) break;
    }
    if (strpbrk(out, "eE") && fabsf(x) >= 1.0f && fabsf(x) < 1e15f && x == truncf(x)) snprintf(out, n, "%.1f", (double)x);
    if (!strpbrk(out, ".eEn")) strncat(out, ".0", n - strlen(out) - 1);
}

typedef struct {
    char* s;
    size_t len, cap;
} Out;

static void out_printf(Out* o, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char buf[256];
    int k = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof(buf)) fatal("config_to_json: a line is longer than %zu bytes", sizeof(buf));
    if (o->len + (size_t)k + 1 > o->cap) {
        o->cap = (o->cap + (size_t)k + 1) * 2;
        o->s = realloc(o->s, o->cap);
        if (!o->s) fatal("out of memory writing config.json");
    }
    memcpy(o->s + o->len, buf, (size_t)k + 1);
    o->len += (size_t)k;
}

char* config_to_json(const ModelConfig* c, const char* torch_dtype) {
    Out o = {0};
    out_printf(&o, "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n");
    for (int i = 0; i < N_NUM_FIELDS; i++) {
        const NumField* f = &num_fields[i];
        if (f->is_float) {
            char num[48];
            float_text(float_of(c, f), num, sizeof(num));
            out_printf(&o, "  \"%s\": %s,\n", f->key, num);
        } else {
            out_printf(&o, "  \"%s\": %d,\n", f->key, int_of(c, f));
        }
    }
    for (int i = 0; i < N_FIXED_FIELDS; i++) {
        const FixedField* f = &fixed_fields[i];
        switch (f->kind) {
        case FIX_INT: out_printf(&o, "  \"%s\": %d,\n", f->key, f->value); break;
        case FIX_BOOL: out_printf(&o, "  \"%s\": %s,\n", f->key, f->value ? "true" : "false"); break;
        case FIX_STRING: out_printf(&o, "  \"%s\": \"%s\",\n", f->key, f->str); break;
        case FIX_NULL: out_printf(&o, "  \"%s\": null,\n", f->key); break;
        case FIX_ABSENT: break;
        }
    }
    // what transformers needs beside the shape: MLA has as many key/value heads as query heads; <s> (our document
    // separator) and </s> of the SentencePiece tokenizer; the initializer only matters for weights a loader lacks
    out_printf(&o, "  \"num_key_value_heads\": %d,\n", c->n_heads);
    out_printf(&o, "  \"attention_dropout\": 0.0,\n");
    out_printf(&o, "  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n");
    out_printf(&o, "  \"initializer_range\": 0.02,\n  \"use_cache\": true,\n");
    out_printf(&o, "  \"torch_dtype\": \"%s\"\n}\n", torch_dtype);
    return o.s;
}

// ---- --model's value

void config_name_from_path(char* name, size_t n, const char* path) {
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    char* base = strrchr(buf, '/');
    if (base && !strcmp(base + 1, "config.json")) {  // DIR/config.json: the folder names the model
        *base = 0;
        while (base > buf && base[-1] == '/') *--base = 0;
        base = strrchr(buf, '/');
        base = base ? base + 1 : buf;
        if (!*base || !strcmp(base, ".") || !strcmp(base, "..")) base = "config";
    } else {
        base = base ? base + 1 : buf;
        if (!strcmp(base, "config.json") || !*base || !strcmp(base, ".") || !strcmp(base, "..")) base = "config";
    }
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", base);
    size_t tl = strlen(tmp);
    if (tl > 5 && !strcmp(tmp + tl - 5, ".json")) tmp[tl - 5] = 0;
    size_t k = 0;
    for (const char* p = tmp; *p && k + 1 < n; p++) {
        char ch = *p;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        name[k++] = ok ? ch : '_';
    }
    name[k] = 0;
    if (!k) snprintf(name, n, "config");
}

int config_from_model_arg(ModelConfig* c, const char* arg, char* why, size_t why_n) {
    size_t len = strlen(arg);
    int looks_like_path = strchr(arg, '/') || (len >= 5 && !strcmp(arg + len - 5, ".json"));
    if (!looks_like_path && config_from_preset(c, arg)) return 1;
    struct stat sb;
    if (!looks_like_path && stat(arg, &sb) != 0) {
        char names[256] = "";
        for (int i = 0; config_preset_names[i]; i++) {
            strncat(names, i ? ", " : "", sizeof(names) - strlen(names) - 1);
            strncat(names, config_preset_names[i], sizeof(names) - strlen(names) - 1);
        }
        snprintf(why, why_n, "flag --model: no preset '%s' and no such file (choose from %s, or give a DeepSeek-V3 "
                 "config.json path)", arg, names);
        return 0;
    }
    char path[1024];
    if (stat(arg, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(path, sizeof(path), "%s/config.json", arg);  // an HF folder
    else snprintf(path, sizeof(path), "%s", arg);
    char msg[768];
    if (!config_from_json_file(c, path, msg, sizeof(msg))) {
        snprintf(why, why_n, "flag --model: %s", msg);
        return 0;
    }
    config_name_from_path(c->name, sizeof(c->name), path);
    return 1;
}

int config_equal(const ModelConfig* a, const ModelConfig* b, char* why, size_t why_n) {
    for (int i = 0; i < N_NUM_FIELDS; i++) {
        const NumField* f = &num_fields[i];
        if (f->is_float ? float_of(a, f) != float_of(b, f) : int_of(a, f) != int_of(b, f)) {
            if (f->is_float) snprintf(why, why_n, "%s: %.9g vs %.9g", f->key, float_of(a, f), float_of(b, f));
            else snprintf(why, why_n, "%s: %d vs %d", f->key, int_of(a, f), int_of(b, f));
            return 0;
        }
    }
    return 1;
}
