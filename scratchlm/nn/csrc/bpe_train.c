/* The merge loop of byte-level BPE training (tokenizers/bpe_train.py), the readable
 * BPETokenizer.train of tokenizers/bpe.py in C, merge for merge the same:
 *
 *   - a pair's count is the sum, over the distinct words holding it, of the word's frequency
 *     times its (overlapping) occurrences in the word;
 *   - each step merges the pair of the highest count, the smallest (a, b) among equal counts;
 *   - a merge rewrites each word holding the pair left to right, non-overlapping, and the
 *     counts of the word's old pairs are taken away and those of its new pairs added.
 *
 * Pairs live in an open-addressing hash table (key a << 32 | b) holding each pair's count and
 * the words it appears in (a list that may hold words that lost the pair: they are checked);
 * a binary heap of (count, pair) entries, pushed on every change and dropped when stale when
 * they surface, finds the best pair (lazy deletion, as the Python heap does).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t key;      /* a << 32 | b; EMPTY when unused */
    int64_t count;
    int32_t *words;    /* indices of words that held the pair when it was counted */
    int64_t n_words, cap_words;
    int64_t changed;   /* the merge (1-based) in which the count last changed */
} Slot;

typedef struct { int64_t count; uint64_t key; } Entry;

#define EMPTY UINT64_MAX

typedef struct {
    Slot *slots;
    int64_t cap, used;
    Entry *heap;
    int64_t n_heap, cap_heap;
    uint64_t *changed;  /* pairs whose count changed in this merge, each once */
    int64_t n_changed, cap_changed, merge;
} State;

static uint64_t hash64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static int grow_table(State *s);

static Slot *lookup(State *s, uint64_t key, int create) {
    if (create && (s->used + 1) * 2 > s->cap && grow_table(s)) return NULL;
    uint64_t mask = (uint64_t)s->cap - 1, i = hash64(key) & mask;
    for (;;) {
        Slot *slot = &s->slots[i];
        if (slot->key == key) return slot;
        if (slot->key == EMPTY) {
            if (!create) return NULL;
            slot->key = key; slot->count = 0; slot->words = NULL;
            slot->n_words = slot->cap_words = 0; slot->changed = 0;
            s->used++;
            return slot;
        }
        i = (i + 1) & mask;
    }
}

static int grow_table(State *s) {
    int64_t old_cap = s->cap;
    Slot *old = s->slots;
    s->cap = old_cap ? old_cap * 2 : 1 << 16;
    s->slots = malloc(sizeof(Slot) * s->cap);
    if (!s->slots) return -1;
    for (int64_t i = 0; i < s->cap; i++) s->slots[i].key = EMPTY;
    s->used = 0;
    for (int64_t i = 0; i < old_cap; i++) {
        if (old[i].key == EMPTY) continue;
        uint64_t mask = (uint64_t)s->cap - 1, j = hash64(old[i].key) & mask;
        while (s->slots[j].key != EMPTY) j = (j + 1) & mask;
        s->slots[j] = old[i];
        s->used++;
    }
    free(old);
    return 0;
}

/* the heap's order: higher count first, then the smaller pair */
static int before(const Entry *x, const Entry *y) {
    return x->count > y->count || (x->count == y->count && x->key < y->key);
}

static int push(State *s, int64_t count, uint64_t key) {
    if (s->n_heap == s->cap_heap) {
        int64_t cap = s->cap_heap ? s->cap_heap * 2 : 1 << 16;
        Entry *h = realloc(s->heap, sizeof(Entry) * cap);
        if (!h) return -1;
        s->heap = h; s->cap_heap = cap;
    }
    int64_t i = s->n_heap++;
    Entry e = {count, key};
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!before(&e, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = e;
    return 0;
}

static Entry pop(State *s) {
    Entry top = s->heap[0], last = s->heap[--s->n_heap];
    int64_t i = 0, n = s->n_heap;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static int add_word(Slot *slot, int32_t w) {
    if (slot->n_words && slot->words[slot->n_words - 1] == w) return 0;
    if (slot->n_words == slot->cap_words) {
        int64_t cap = slot->cap_words ? slot->cap_words * 2 : 4;
        int32_t *p = realloc(slot->words, sizeof(int32_t) * cap);
        if (!p) return -1;
        slot->words = p; slot->cap_words = cap;
    }
    slot->words[slot->n_words++] = w;
    return 0;
}

#define KEY(a, b) (((uint64_t)(uint32_t)(a) << 32) | (uint32_t)(b))

/* add delta * freq to the count of every pair of word w (symbols sym[0..len)); with add_to,
 * record w in each pair's list. Each pair changed is noted once per merge. */
static int count_pairs(State *s, const int32_t *sym, int64_t len, int64_t delta, int32_t w,
                       int add_to) {
    for (int64_t i = 0; i + 1 < len; i++) {
        uint64_t key = KEY(sym[i], sym[i + 1]);
        Slot *slot = lookup(s, key, 1);
        if (!slot) return -1;
        slot->count += delta;
        if (add_to && add_word(slot, w)) return -1;
        if (s->merge && slot->changed != s->merge) {
            slot->changed = s->merge;
            if (s->n_changed == s->cap_changed) {
                int64_t cap = s->cap_changed ? s->cap_changed * 2 : 1024;
                uint64_t *c = realloc(s->changed, sizeof(uint64_t) * cap);
                if (!c) return -1;
                s->changed = c; s->cap_changed = cap;
            }
            s->changed[s->n_changed++] = key;
        }
    }
    return 0;
}

/* Train: words are sym[off[w] .. off[w + 1]) with frequency freq[w] (symbols rewritten in
 * place; a word only shrinks). Writes up to n_merges (a, b) pairs to out (the i-th gets id
 * first_id + i); returns how many merges were made, or -1 when memory ran out. */
int64_t bpe_train(int32_t *sym, const int64_t *off, int64_t *len, const int64_t *freq,
                  int64_t n_words, int64_t n_merges, int32_t first_id, int32_t *out) {
    State s = {0};
    int64_t done = -1;
    int32_t *stamp = calloc(n_words ? n_words : 1, sizeof(int32_t));
    if (!stamp || grow_table(&s)) goto end;
    for (int64_t w = 0; w < n_words; w++)
        if (count_pairs(&s, sym + off[w], len[w], freq[w], (int32_t)w, 1)) goto end;
    for (int64_t i = 0; i < s.cap; i++)
        if (s.slots[i].key != EMPTY && s.slots[i].count > 0 &&
            push(&s, s.slots[i].count, s.slots[i].key)) goto end;
    done = 0;
    while (done < n_merges) {
        Slot *best = NULL;
        uint64_t key = 0;
        while (s.n_heap) {  /* pop until an entry agrees with its pair's count */
            Entry e = pop(&s);
            Slot *slot = lookup(&s, e.key, 0);
            if (slot && slot->count == e.count && e.count > 0) { best = slot; key = e.key; break; }
        }
        if (!best) break;  /* every word is a single token */
        int32_t a = (int32_t)(key >> 32), b = (int32_t)(key & 0xffffffffu);
        int32_t id = first_id + (int32_t)done;
        out[2 * done] = a; out[2 * done + 1] = b;
        done++;
        /* the words to rewrite: taken from the pair's list, which is emptied */
        int32_t *words = best->words;
        int64_t n = best->n_words;
        best->words = NULL; best->n_words = best->cap_words = 0;
        s.merge = done;
        s.n_changed = 0;
        for (int64_t k = 0; k < n && done > 0; k++) {
            int32_t w = words[k];
            if (stamp[w] == (int32_t)done) continue;  /* listed twice */
            stamp[w] = (int32_t)done;
            int32_t *p = sym + off[w];
            int64_t m = len[w], j = 0, found = 0;
            for (int64_t i = 0; i + 1 < m; i++)
                if (p[i] == a && p[i + 1] == b) { found = 1; break; }
            if (!found) continue;  /* the word lost the pair since it was listed */
            if (count_pairs(&s, p, m, -freq[w], w, 0)) { done = -1; break; }
            for (int64_t i = 0; i < m; i++) {  /* left to right, non-overlapping */
                if (i + 1 < m && p[i] == a && p[i + 1] == b) { p[j++] = id; i++; }
                else p[j++] = p[i];
            }
            len[w] = j;
            if (count_pairs(&s, p, j, freq[w], w, 1)) { done = -1; break; }
        }
        free(words);
        if (done < 0) break;
        for (int64_t k = 0; k < s.n_changed; k++) {  /* every changed count enters the heap */
            Slot *slot = lookup(&s, s.changed[k], 0);
            if (slot && slot->count > 0 && push(&s, slot->count, s.changed[k])) {
                done = -1;
                break;
            }
        }
        if (done < 0) break;
    }
end:
    if (s.slots)
        for (int64_t i = 0; i < s.cap; i++)
            if (s.slots[i].key != EMPTY) free(s.slots[i].words);
    free(s.slots);
    free(s.heap);
    free(s.changed);
    free(stamp);
    return done;
}
