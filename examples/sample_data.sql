-- Deterministic sample rows for examples/sample_schema.sql (a few thousand).
INSERT INTO customers
SELECT g, md5('customer' || g)::uuid, 'customer' || g || '@example.com', 'Customer ' || g,
       '$pbkdf2$' || md5('pw' || g), (ARRAY['bronze', 'silver', 'gold'])[1 + g % 3]::customer_tier,
       CASE WHEN g % 4 = 0 THEN ARRAY['vip', 'newsletter'] WHEN g % 4 = 1 THEN ARRAY['quote"d', 'comma,ed'] ELSE '{}' END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '7 hours 13 minutes 0.123456 seconds',
       timestamptz '2025-06-01 00:00:00+00' + g * interval '3 minutes'
FROM generate_series(1, 500) g;

INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 5, '0'), 'Product ' || g || CASE WHEN g % 10 = 0 THEN ' (ünïcode ✓)' ELSE '' END,
       round((g * 3.7) % 500 + 0.99, 2), CASE WHEN g % 7 = 0 THEN NULL ELSE (g % 50) / 10.0 END,
       jsonb_build_object('colour', (ARRAY['red', 'green', 'blue'])[1 + g % 3], 'sizes', jsonb_build_array('S', 'M', 'L'),
                          'stock', g * 11, 'ratio', 0.1 * g),
       CASE WHEN g % 5 = 0 THEN decode(md5('img' || g), 'hex') ELSE NULL END,
       g % 13 <> 0,
       timestamptz '2025-06-01 00:00:00+00' + g * interval '5 minutes'
FROM generate_series(1, 200) g;

INSERT INTO orders
SELECT g, 1 + (g * 7) % 500, timestamptz '2025-01-01 00:00:00+00' + g * interval '2 hours 1 second',
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4], 0, CASE WHEN g % 9 = 0 THEN E'fragile\tcontents\nhandle with care' END,
       timestamptz '2025-06-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 1500) g;

INSERT INTO order_items
SELECT o, l, 1 + (o * 13 + l * 29) % 200, 1 + (o + l) % 5, round(((o * l) % 300) + 0.5, 2)
FROM generate_series(1, 1500) o, generate_series(1, 3) l
WHERE (o + l) % 4 <> 0;

UPDATE orders o SET total = s.total
FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id) s
WHERE s.order_id = o.id;

INSERT INTO reviews
SELECT md5('review' || g)::uuid, 1 + (g * 17) % 200, 1 + (g * 31) % 500, 1 + g % 5,
       CASE WHEN g % 6 = 0 THEN NULL ELSE 'Review ' || g || ': ' || repeat('good ', 1 + g % 4) END,
       timestamptz '2025-03-01 00:00:00+00' + g * interval '97 minutes'
FROM generate_series(1, 600) g;
