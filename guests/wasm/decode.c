/* decode.c: decodes a Wasm binary into a `module` (sections, types, imports, segments)
 * and hands each function body to the compiler. Bounds-checks everything; any defect
 * raises eng_malformed. */
#include "reader.h"

void *mod_alloc(module *m, size_t n) {
    if (m->nallocs == m->allocs_cap) {
        uint32_t cap = m->allocs_cap ? m->allocs_cap * 2 : 16;
        void **a = plat_realloc(m->allocs, cap * sizeof(void *));
        if (!a) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
        m->allocs = a;
        m->allocs_cap = cap;
    }
    void *p = plat_calloc(1, n ? n : 1);
    if (!p) eng_fail(WASM_STATUS_LIMIT, "engine heap exhausted");
    m->allocs[m->nallocs++] = p;
    return p;
}

bool eng_is_valtype(uint8_t t) {
    return t == WASM_TYPE_I32 || t == WASM_TYPE_I64 || t == WASM_TYPE_F32 || t == WASM_TYPE_F64 ||
           t == WASM_TYPE_V128 || t == WASM_TYPE_FUNCREF || t == WASM_TYPE_EXTERNREF || t == WASM_TYPE_EXNREF;
}

static uint8_t rd_valtype(reader *r) {
    uint8_t t = rd_u8(r);
    if (!eng_is_valtype(t)) eng_malformed("malformed value type");
    return t;
}

static uint8_t rd_reftype(reader *r) {
    uint8_t t = rd_u8(r);
    if (t != WASM_TYPE_FUNCREF && t != WASM_TYPE_EXTERNREF && t != WASM_TYPE_EXNREF)
        eng_malformed("malformed reference type");
    return t;
}

static limits rd_limits(reader *r) {
    limits l = {0, 0, false};
    uint8_t flag = rd_u8(r);
    if (flag > 1) eng_malformed("integer too large");
    l.min = rd_u32(r);
    if (flag) {
        l.has_max = true;
        l.max = rd_u32(r);
    }
    return l;
}

static const char *rd_name(reader *r, uint32_t *len) {
    uint32_t n = rd_u32(r);
    const char *s = (const char *)rd_bytes(r, n);
    *len = n;
    return s;
}

/* A constant expression (Wasm 2.0: one constant, ref.null, ref.func, or global.get of an
 * imported immutable global): checks its shape and records where it is. */
static cexpr rd_cexpr(module *m, reader *r) {
    cexpr e = {r->p, 0};
    uint32_t n = 0;
    for (;;) {
        uint8_t op = rd_u8(r);
        switch (op) {
        case 0x0b:
            if (n != 1) eng_fail(WASM_STATUS_INVALID, "type mismatch");
            e.len = (uint32_t)(r->p - e.code);
            return e;
        case 0x41: rd_s32(r); break;
        case 0x42: rd_s64(r); break;
        case 0x43: rd_bytes(r, 4); break;
        case 0x44: rd_bytes(r, 8); break;
        case 0xfd:
            if (rd_u32(r) != 12) eng_fail(WASM_STATUS_INVALID, "constant expression required");
            rd_bytes(r, 16);
            break;
        case 0x23: {
            uint32_t g = rd_u32(r);
            if (g >= m->nglobals_imported) eng_fail(WASM_STATUS_INVALID, "unknown global");
            uint32_t k = 0;
            for (uint32_t i = 0; i < m->nimports; i++) {
                if (m->imports[i].kind != EXT_GLOBAL) continue;
                if (k++ == g && m->imports[i].mut)
                    eng_fail(WASM_STATUS_INVALID, "constant expression required");
            }
            break;
        }
        case 0xd0: rd_reftype(r); break;
        case 0xd2:
            if (rd_u32(r) >= m->nfuncs) eng_fail(WASM_STATUS_INVALID, "unknown function");
            break;
        default: eng_fail(WASM_STATUS_INVALID, "constant expression required");
        }
        n++;
    }
}

static cexpr funcidx_expr(module *m, uint32_t idx) {
    /* ref.func idx end, as an expression (so every element item has one form). */
    uint8_t *p = mod_alloc(m, 8);
    uint32_t n = 0;
    p[n++] = 0xd2;
    do {
        uint8_t b = idx & 0x7f;
        idx >>= 7;
        p[n++] = b | (idx ? 0x80 : 0);
    } while (idx);
    p[n++] = 0x0b;
    return (cexpr){p, n};
}

static void read_types(module *m, reader *r) {
    m->ntypes = rd_count(r, 3);
    m->types = mod_alloc(m, m->ntypes * sizeof(functype));
    for (uint32_t i = 0; i < m->ntypes; i++) {
        if (rd_u8(r) != 0x60) eng_malformed("integer representation too long");
        uint32_t np = rd_count(r, 1);
        const uint8_t *pt = rd_bytes(r, np);
        uint32_t nr = rd_count(r, 1);
        const uint8_t *rt = rd_bytes(r, nr);
        functype *t = &m->types[i];
        t->nparams = np;
        t->nresults = nr;
        t->types = mod_alloc(m, np + nr);
        memcpy(t->types, pt, np);
        memcpy(t->types + np, rt, nr);
        for (uint32_t k = 0; k < np + nr; k++)
            if (!eng_is_valtype(t->types[k])) eng_malformed("malformed value type");
        t->canon = eng_canon_type(t->types, np, nr);
    }
}

/* A tag type (exception handling): attribute 0 (an exception), a function type index
 * whose results are empty. */
static uint32_t rd_tagtype(module *m, reader *r) {
    if (rd_u8(r) != 0) eng_malformed("malformed tag attribute");
    uint32_t t = rd_u32(r);
    if (t >= m->ntypes) eng_fail(WASM_STATUS_INVALID, "unknown type");
    if (m->types[t].nresults) eng_fail(WASM_STATUS_INVALID, "non-empty tag result type");
    return t;
}

static void read_tags(module *m, reader *r) {
    uint32_t n = rd_count(r, 2);
    m->ntags = m->ntags_imported + n;
    if (m->ntags < n) eng_malformed("too many tags");
    m->tag_type = mod_alloc(m, (size_t)m->ntags * sizeof(uint32_t));
    uint32_t k = 0;
    for (uint32_t i = 0; i < m->nimports; i++)
        if (m->imports[i].kind == EXT_TAG) m->tag_type[k++] = m->imports[i].type;
    for (uint32_t i = 0; i < n; i++) m->tag_type[k++] = rd_tagtype(m, r);
}

static void read_imports(module *m, reader *r) {
    m->nimports = rd_count(r, 4);
    m->imports = mod_alloc(m, m->nimports * sizeof(import_desc));
    for (uint32_t i = 0; i < m->nimports; i++) {
        import_desc *d = &m->imports[i];
        d->module = rd_name(r, &d->module_len);
        d->name = rd_name(r, &d->name_len);
        d->kind = rd_u8(r);
        switch (d->kind) {
        case EXT_FUNC:
            d->type = rd_u32(r);
            if (d->type >= m->ntypes) eng_malformed("unknown type");
            m->nfuncs_imported++;
            break;
        case EXT_TABLE:
            d->valtype = rd_reftype(r);
            d->lim = rd_limits(r);
            m->ntables_imported++;
            break;
        case EXT_MEM:
            d->lim = rd_limits(r);
            m->nmems_imported++;
            break;
        case EXT_TAG:
            d->type = rd_tagtype(m, r);
            m->ntags_imported++;
            break;
        case EXT_GLOBAL: {
            d->valtype = rd_valtype(r);
            uint8_t mut = rd_u8(r);
            if (mut > 1) eng_malformed("malformed mutability");
            d->mut = mut;
            m->nglobals_imported++;
            break;
        }
        default: eng_malformed("malformed import kind");
        }
    }
}

static void read_functions(module *m, reader *r, uint32_t *ndefined) {
    uint32_t n = rd_count(r, 1);
    m->nfuncs = m->nfuncs_imported + n;
    if (m->nfuncs < n) eng_malformed("too many functions");
    m->func_type = mod_alloc(m, (size_t)m->nfuncs * sizeof(uint32_t));
    uint32_t k = 0;
    for (uint32_t i = 0; i < m->nimports; i++)
        if (m->imports[i].kind == EXT_FUNC) m->func_type[k++] = m->imports[i].type;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = rd_u32(r);
        if (t >= m->ntypes) eng_malformed("unknown type");
        m->func_type[k++] = t;
    }
    *ndefined = n;
}

static void read_tables(module *m, reader *r) {
    uint32_t n = rd_count(r, 2);
    m->ntables = m->ntables_imported + n;
    m->tables = mod_alloc(m, (size_t)m->ntables * sizeof(table_desc));
    uint32_t k = 0;
    for (uint32_t i = 0; i < m->nimports; i++)
        if (m->imports[i].kind == EXT_TABLE)
            m->tables[k++] = (table_desc){m->imports[i].valtype, m->imports[i].lim};
    for (uint32_t i = 0; i < n; i++) {
        m->tables[k].elemtype = rd_reftype(r);
        m->tables[k].lim = rd_limits(r);
        k++;
    }
}

static void read_memories(module *m, reader *r) {
    uint32_t n = rd_count(r, 2);
    m->nmems = m->nmems_imported + n;
    m->mems = mod_alloc(m, (size_t)m->nmems * sizeof(limits));
    uint32_t k = 0;
    for (uint32_t i = 0; i < m->nimports; i++)
        if (m->imports[i].kind == EXT_MEM) m->mems[k++] = m->imports[i].lim;
    for (uint32_t i = 0; i < n; i++) m->mems[k++] = rd_limits(r);
    if (m->nmems > 1) eng_fail(WASM_STATUS_INVALID, "multiple memories");
    for (uint32_t i = 0; i < m->nmems; i++)
        if (m->mems[i].min > WASM_MAX_PAGES || (m->mems[i].has_max && m->mems[i].max > WASM_MAX_PAGES))
            eng_fail(WASM_STATUS_INVALID, "memory size must be at most 65536 pages (4GiB)");
}

static void read_globals(module *m, reader *r) {
    uint32_t n = rd_count(r, 3);
    m->nglobals = m->nglobals_imported + n;
    m->globals = mod_alloc(m, (size_t)m->nglobals * sizeof(global_desc));
    uint32_t k = 0;
    for (uint32_t i = 0; i < m->nimports; i++)
        if (m->imports[i].kind == EXT_GLOBAL)
            m->globals[k++] = (global_desc){m->imports[i].valtype, m->imports[i].mut, {0, 0}};
    for (uint32_t i = 0; i < n; i++) {
        global_desc *g = &m->globals[k++];
        g->valtype = rd_valtype(r);
        uint8_t mut = rd_u8(r);
        if (mut > 1) eng_malformed("malformed mutability");
        g->mut = mut;
        g->init = rd_cexpr(m, r);
    }
}

static void read_exports(module *m, reader *r) {
    m->nexports = rd_count(r, 3);
    m->exports = mod_alloc(m, m->nexports * sizeof(export_desc));
    for (uint32_t i = 0; i < m->nexports; i++) {
        export_desc *e = &m->exports[i];
        e->name = rd_name(r, &e->name_len);
        e->kind = rd_u8(r);
        e->index = rd_u32(r);
        uint32_t limit = e->kind == EXT_FUNC     ? m->nfuncs
                         : e->kind == EXT_TABLE  ? m->ntables
                         : e->kind == EXT_MEM    ? m->nmems
                         : e->kind == EXT_GLOBAL ? m->nglobals
                         : e->kind == EXT_TAG    ? m->ntags
                                                 : 0;
        if (e->kind > EXT_TAG) eng_malformed("malformed export kind");
        if (e->index >= limit) eng_malformed("unknown export index");
    }
}

static void read_elems(module *m, reader *r) {
    m->nelems = rd_count(r, 2);
    m->elems = mod_alloc(m, m->nelems * sizeof(elem_desc));
    for (uint32_t i = 0; i < m->nelems; i++) {
        elem_desc *e = &m->elems[i];
        uint32_t flags = rd_u32(r);
        if (flags > 7) eng_malformed("malformed elements segment kind");
        e->elemtype = WASM_TYPE_FUNCREF;
        e->mode = (flags & 1) ? ((flags & 2) ? SEG_DECLARATIVE : SEG_PASSIVE) : SEG_ACTIVE;
        if (e->mode == SEG_ACTIVE) {
            if (flags & 2) e->table = rd_u32(r);
            e->offset = rd_cexpr(m, r);
        }
        bool exprs = flags & 4;
        if (flags & 3) {
            if (exprs) {
                e->elemtype = rd_reftype(r);
            } else if (rd_u8(r) != 0x00) {
                eng_malformed("malformed element kind");
            }
        }
        e->count = rd_count(r, 1);
        e->items = mod_alloc(m, (size_t)e->count * sizeof(cexpr));
        for (uint32_t k = 0; k < e->count; k++) {
            if (exprs) {
                e->items[k] = rd_cexpr(m, r);
            } else {
                uint32_t f = rd_u32(r);
                if (f >= m->nfuncs) eng_malformed("unknown function");
                e->items[k] = funcidx_expr(m, f);
            }
        }
        if (e->mode == SEG_ACTIVE && e->table >= m->ntables) eng_malformed("unknown table");
    }
}

static void read_datas(module *m, reader *r) {
    uint32_t n = rd_count(r, 2);
    if (m->has_datacount && n != m->datacount) eng_malformed("data count and data section have inconsistent lengths");
    m->ndatas = n;
    m->datas = mod_alloc(m, n * sizeof(data_desc));
    for (uint32_t i = 0; i < n; i++) {
        data_desc *d = &m->datas[i];
        uint32_t flags = rd_u32(r);
        if (flags > 2) eng_malformed("malformed data segment kind");
        d->mode = flags == 1 ? SEG_PASSIVE : SEG_ACTIVE;
        if (flags == 2) d->memory = rd_u32(r);
        if (d->mode == SEG_ACTIVE) {
            d->offset = rd_cexpr(m, r);
            if (d->memory >= m->nmems) eng_malformed("unknown memory");
        }
        d->len = rd_u32(r);
        d->bytes = rd_bytes(r, d->len);
    }
}

static void read_code(module *m, reader *r, uint32_t ndefined) {
    uint32_t n = rd_count(r, 1);
    if (n != ndefined) eng_malformed("function and code section have inconsistent lengths");
    m->codes = mod_alloc(m, (size_t)n * sizeof(code_desc));
    for (uint32_t i = 0; i < n; i++) {
        uint32_t size = rd_u32(r);
        const uint8_t *body = rd_bytes(r, size);
        compile_function(m, i, body, size);
    }
}

/* Gives absent sections their import-only contents, for every section that comes
 * before position `upto` in the section order. */
static void ensure_defaults(module *m, int upto, uint32_t *ndefined) {
    static const uint8_t zero = 0;
    reader empty = {&zero, &zero + 1};
    if (upto > 6 && !m->func_type) read_functions(m, &empty, ndefined);
    empty.p = &zero;
    if (upto > 8 && !m->tables) read_tables(m, &empty);
    empty.p = &zero;
    if (upto > 10 && !m->mems) read_memories(m, &empty);
    empty.p = &zero;
    if (upto > 11 && !m->tag_type) read_tags(m, &empty);
    empty.p = &zero;
    if (upto > 12 && !m->globals) read_globals(m, &empty);
}

void decode_module(module *m) {
    reader r = {m->bytes, m->bytes + m->len};
    static const uint8_t magic[8] = {0, 'a', 's', 'm', 1, 0, 0, 0};
    if (m->len < 4 || memcmp(m->bytes, magic, 4) != 0) eng_malformed("magic header not detected");
    if (m->len < 8 || memcmp(m->bytes + 4, magic + 4, 4) != 0) eng_malformed("unknown binary version");
    r.p += 8;
    uint32_t ndefined = 0;
    bool have_code = false;
    int last = 0;
    /* Position of each section id in the required order: type import func table mem
     * tag global export start elem datacount code data (the tag section, id 13, of
     * exception handling sits between memory and global). */
    static const int order[14] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 22, 24, 20, 11};
    while (r.p < r.end) {
        uint8_t id = rd_u8(&r);
        uint32_t size = rd_u32(&r);
        reader s;
        s.p = rd_bytes(&r, size);
        s.end = s.p + size;
        if (id == 0) {
            uint32_t nl;
            rd_name(&s, &nl);
            continue;
        }
        if (id > 13) eng_malformed("malformed section id");
        if (order[id] <= last) eng_malformed("unexpected content after last section");
        last = order[id];
        ensure_defaults(m, order[id], &ndefined);
        switch (id) {
        case 1: read_types(m, &s); break;
        case 2: read_imports(m, &s); break;
        case 3: read_functions(m, &s, &ndefined); break;
        case 4: read_tables(m, &s); break;
        case 5: read_memories(m, &s); break;
        case 13: read_tags(m, &s); break;
        case 6: read_globals(m, &s); break;
        case 7: read_exports(m, &s); break;
        case 8:
            m->has_start = true;
            m->start = rd_u32(&s);
            break;
        case 9: read_elems(m, &s); break;
        case 12:
            m->has_datacount = true;
            m->datacount = rd_u32(&s);
            break;
        case 10: read_code(m, &s, ndefined); have_code = true; break;
        case 11: read_datas(m, &s); break;
        }
        if (s.p != s.end) eng_malformed("section size mismatch");
    }
    ensure_defaults(m, 99, &ndefined);
    if (ndefined && !have_code) eng_malformed("function and code section have inconsistent lengths");
    if (m->has_start && m->start >= m->nfuncs) eng_malformed("unknown function");
    if (m->has_datacount && !m->datas && m->datacount != 0)
        eng_malformed("data count and data section have inconsistent lengths");
    if (!m->codes) m->codes = mod_alloc(m, sizeof(code_desc));
}
