-- A small shop: the sample schema of `make demo` and the runner specs.
CREATE TYPE customer_tier AS ENUM ('bronze', 'silver', 'gold');

CREATE TABLE customers (
  id bigint PRIMARY KEY,
  uuid uuid UNIQUE NOT NULL,
  email text UNIQUE NOT NULL,
  name text NOT NULL,
  password_hash text,
  tier customer_tier NOT NULL DEFAULT 'bronze',
  tags text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL
);

CREATE TABLE products (
  id integer PRIMARY KEY,
  sku text UNIQUE NOT NULL,
  name text NOT NULL,
  price numeric(10,2) NOT NULL,
  weight_kg real,
  attributes jsonb NOT NULL DEFAULT '{}',
  thumbnail bytea,
  active boolean NOT NULL DEFAULT true,
  updated_at timestamptz NOT NULL
);

CREATE TABLE orders (
  id bigint PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id),
  ordered_at timestamptz NOT NULL,
  status text NOT NULL,
  total numeric(12,2) NOT NULL,
  notes text,
  updated_at timestamptz NOT NULL
);

CREATE TABLE order_items (
  order_id bigint NOT NULL REFERENCES orders (id),
  line integer NOT NULL,
  product_id integer NOT NULL REFERENCES products (id),
  quantity integer NOT NULL CHECK (quantity > 0),
  unit_price numeric(10,2) NOT NULL,
  PRIMARY KEY (order_id, line)
);

CREATE TABLE reviews (
  id uuid PRIMARY KEY,
  product_id integer NOT NULL REFERENCES products (id),
  customer_id bigint NOT NULL REFERENCES customers (id),
  rating smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
  body text,
  created_at timestamptz NOT NULL
);
