-- Read-model documents: JSON values by collection and id, written by
-- projections through es_store::documents::Collection. Ids compare and
-- sort bytewise ("C"), as on the other backends.
CREATE TABLE "read_models" (
    collection text        COLLATE "C" NOT NULL,
    id         text        COLLATE "C" NOT NULL,
    body       jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, id)
);
