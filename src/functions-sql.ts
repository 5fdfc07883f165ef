import { quoteSchema } from './validate.js';

/**
 * The library's SQL functions for one schema: the public database surface.
 *
 * Every object is schema-qualified; the only schema-dependent token is the
 * quoted schema name, so the same text serves any validated schema. No
 * `--> statement-breakpoint` appears inside a `$$` body. Every function is
 * `CREATE OR REPLACE`, so applying this to any older install upgrades it in place; a
 * function whose OUT columns changed (which `CREATE OR REPLACE` cannot do) is moved aside
 * first and dropped once its replacement has taken over its privileges. Documented for
 * other languages in docs/SQL.md.
 *
 * Locking model (see docs/DESIGN-NOTES.md):
 * - a ticket is held by a transaction-level advisory lock on `(_ns(), ticket.id)`;
 * - `(_ns() # 1, hashtext(name))` is never used; admin work serialises on the semaphore row;
 * - `(_ns() # 2, semaphore.id)` is taken *shared, at session level* by waiters, so a
 *   releaser can tell cheaply whether anyone waits before it sends a NOTIFY;
 * - `(_ns() # 3, 0)` is taken *shared, at session level* by LISTEN connections that NOTIFYs
 *   are known to reach; a releaser names one of them in its NOTIFY;
 * - `(_ns() # 4, slot)` is taken *exclusive, at session level* by such a LISTEN connection: its
 *   slot number (the lowest free one), and `(_ns() # (slot << 8 | 5), semaphore.id)` *shared, at
 *   session level* beside each waiter marker it takes, so a releaser finds the next waiting
 *   process by trying a few of these locks instead of reading `pg_locks`.
 *
 * Two parts of these functions are repeated in the client, for speed (issue 11, eleventh
 * round), and a later functions migration must keep them true or change the client with it:
 * `acquire`'s fast path (one ticket of one semaphore: the lock keys above, the held-tickets
 * setting `pg_semaphore.held_<hex of _ns()>`, the idle timeout and the label) is
 * `statements.acquireOne` (with its ordered lists' never-reached LIMIT); `wake`'s first step
 * (nothing to do when every waiter marker can be taken exclusively; a marker held exclusively
 * by another release's check gets the NOTIFY without a pid, without a search) is in
 * `statements.wakeBeforeCommit`.
 */
export function functionsSql(schema: string): string {
  const s = quoteSchema(schema);
  return `-- pg-semaphore SQL functions for schema ${s}
CREATE OR REPLACE FUNCTION ${s}._ns() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT hashtext('pg-semaphore:${s}')
$$;

CREATE OR REPLACE FUNCTION ${s}._check_name(p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_name IS NULL OR char_length(p_name) < 1 OR char_length(p_name) > 200 THEN
    RAISE EXCEPTION 'pg-semaphore: expected a semaphore name of 1 to 200 characters, got %',
      CASE WHEN p_name IS NULL THEN 'null' ELSE char_length(p_name) || ' characters' END
      USING ERRCODE = '22023';
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION ${s}._check_tickets(p_tickets integer, p_min integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF p_tickets IS NULL OR p_tickets < p_min OR p_tickets > 10000 THEN
    RAISE EXCEPTION 'pg-semaphore: expected a ticket count from % to 10000, got %', p_min, coalesce(p_tickets::text, 'null')
      USING ERRCODE = '22023';
  END IF;
END
$$;

-- Creates a semaphore or resizes it. Growing is immediate. Shrinking waits (at most
-- p_timeout_ms; NULL waits forever) until the removed tickets are returned.
-- Concurrent calls on one semaphore are serialised by the row lock.
CREATE OR REPLACE FUNCTION ${s}.make(p_name text, p_tickets integer, p_timeout_ms integer DEFAULT 30000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  v_id integer;
  v_old integer;
  v_ticket record;
  v_lock_timeout text := current_setting('lock_timeout');
BEGIN
  PERFORM ${s}._check_name(p_name);
  PERFORM ${s}._check_tickets(p_tickets, 0);
  IF p_timeout_ms IS NOT NULL AND p_timeout_ms < 0 THEN
    RAISE EXCEPTION 'pg-semaphore: expected a timeout of 0 ms or more (or null), got %', p_timeout_ms USING ERRCODE = '22023';
  END IF;
  INSERT INTO ${s}.semaphores AS m (name, tickets) VALUES (p_name, 0) ON CONFLICT (name) DO NOTHING;
  SELECT id, tickets INTO v_id, v_old FROM ${s}.semaphores WHERE name = p_name FOR UPDATE;
  IF p_tickets > v_old THEN
    INSERT INTO ${s}.tickets (semaphore_id, no)
      SELECT v_id, g FROM generate_series(v_old + 1, p_tickets) g;
    -- new tickets are free tickets: tell waiting processes (delivered at commit; make()
    -- writes anyway, so the NOTIFY costs nothing extra here)
    PERFORM pg_notify('pg_semaphore', ${s}._ns() || ':' || v_id);
  ELSIF p_tickets < v_old THEN
    PERFORM set_config('lock_timeout', CASE WHEN p_timeout_ms IS NULL THEN 0 ELSE greatest(p_timeout_ms, 1) END::text, true);
    FOR v_ticket IN SELECT id FROM ${s}.tickets WHERE semaphore_id = v_id AND no > p_tickets ORDER BY no LOOP
      BEGIN
        PERFORM pg_advisory_xact_lock(${s}._ns(), v_ticket.id);
      EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'pg-semaphore: timed out after % ms waiting for the tickets of "%" to be returned (shrinking from % to %)',
          p_timeout_ms, p_name, v_old, p_tickets USING ERRCODE = '55P03', HINT = 'pg-semaphore:timeout';
      END;
    END LOOP;
    PERFORM set_config('lock_timeout', v_lock_timeout, true);
    DELETE FROM ${s}.tickets WHERE semaphore_id = v_id AND no > p_tickets;
  END IF;
  UPDATE ${s}.semaphores SET tickets = p_tickets, updated_at = now() WHERE id = v_id AND tickets <> p_tickets;
  RETURN v_id;
END
$$;

-- Creates each missing semaphore with p_tickets tickets; leaves existing ones alone.
CREATE OR REPLACE FUNCTION ${s}.ensure(p_names text[], p_tickets integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_name text;
BEGIN
  PERFORM ${s}._check_tickets(p_tickets, 1);
  FOREACH v_name IN ARRAY p_names LOOP
    PERFORM ${s}._check_name(v_name);
    IF NOT EXISTS (SELECT 1 FROM ${s}.semaphores WHERE name = v_name) THEN
      PERFORM ${s}.make(v_name, p_tickets);
    END IF;
  END LOOP;
END
$$;

-- Waits (at most p_timeout_ms; NULL waits forever) until every ticket is returned,
-- then removes the semaphore. Returns false when it did not exist.
CREATE OR REPLACE FUNCTION ${s}.destroy(p_name text, p_timeout_ms integer DEFAULT 30000) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_id integer;
  v_ticket record;
  v_lock_timeout text := current_setting('lock_timeout');
BEGIN
  PERFORM ${s}._check_name(p_name);
  IF p_timeout_ms IS NOT NULL AND p_timeout_ms < 0 THEN
    RAISE EXCEPTION 'pg-semaphore: expected a timeout of 0 ms or more (or null), got %', p_timeout_ms USING ERRCODE = '22023';
  END IF;
  SELECT id INTO v_id FROM ${s}.semaphores WHERE name = p_name FOR UPDATE;
  IF v_id IS NULL THEN
    RETURN false;
  END IF;
  PERFORM set_config('lock_timeout', CASE WHEN p_timeout_ms IS NULL THEN 0 ELSE greatest(p_timeout_ms, 1) END::text, true);
  FOR v_ticket IN SELECT id FROM ${s}.tickets WHERE semaphore_id = v_id ORDER BY no LOOP
    BEGIN
      PERFORM pg_advisory_xact_lock(${s}._ns(), v_ticket.id);
    EXCEPTION WHEN lock_not_available THEN
      RAISE EXCEPTION 'pg-semaphore: timed out after % ms waiting for the tickets of "%" to be returned before destroying it',
        p_timeout_ms, p_name USING ERRCODE = '55P03', HINT = 'pg-semaphore:timeout';
    END;
  END LOOP;
  PERFORM set_config('lock_timeout', v_lock_timeout, true);
  DELETE FROM ${s}.semaphores WHERE id = v_id;
  RETURN true;
END
$$;

-- Upgrades. acquire's signature changed twice, and CREATE OR REPLACE can change neither its
-- arguments nor its OUT columns: pg-semaphore 0.1's acquire returned row ids (no
-- ticket_semaphores), and until 0003_functions it had no p_starts. Move any four-argument
-- acquire aside here; the block after the new acquire copies its privileges over and drops it.
DO $$
DECLARE
  v_old regprocedure := to_regprocedure('${s}.acquire(text[], integer[], text, integer)');
BEGIN
  IF v_old IS NOT NULL THEN
    ALTER FUNCTION ${s}.acquire(text[], integer[], text, integer) RENAME TO _acquire_old;
  END IF;
END
$$;

-- Try to take p_counts[i] tickets of semaphore p_names[i], for every i, all or nothing,
-- without waiting. Never writes (no transaction id is assigned). Call it inside BEGIN;
-- the tickets return at COMMIT or ROLLBACK.
--   status 'ok'      : tickets holds the numbers (1..capacity) of the tickets taken, in
--                      request order, and ticket_semaphores the semaphore of each;
--                      semaphore_ids the ids of the semaphores (for wake())
--   status 'busy'    : not enough free tickets; nothing was taken. names: the semaphore
--                      found short (the first one checked, in id order); NULL when unknown
--   status 'missing' : names lists the semaphores that do not exist; nothing was taken
--   status 'exceeds' : names lists the semaphores asked for more tickets than they have
-- p_count 0 means "every ticket" (an exclusive hold). Tickets this transaction already
-- holds are never counted twice (nor returned again). On success the transaction's
-- idle_in_transaction_session_timeout (p_idle_timeout_ms) and application_name
-- (p_label) are set locally when given. p_starts[i] (optional) is the ticket number where
-- the search for free tickets of p_names[i] starts, going up and wrapping around; without it
-- the search starts at 1 (the lowest free tickets are taken). Node holders pass the ticket
-- they returned last, which is usually free again, so a nearly full semaphore costs about
-- what an empty one does.
CREATE OR REPLACE FUNCTION ${s}.acquire(
  p_names text[], p_counts integer[], p_label text DEFAULT NULL, p_idle_timeout_ms integer DEFAULT NULL,
  p_starts integer[] DEFAULT NULL,
  OUT status text, OUT tickets integer[], OUT ticket_semaphores text[], OUT semaphore_ids integer[], OUT names text[])
LANGUAGE plpgsql AS $$
DECLARE
  -- every statement of the fast path counts (issue 11): it runs two queries, no subtransaction,
  -- and no set_config of its own (the re-read sets them); the general path's variables live in
  -- its own block
  v_held integer[] := coalesce(nullif(current_setting('pg_semaphore.held_' || to_hex(${s}._ns()), true), ''), '{}')::integer[];
  v_id integer;
  v_name text;
  v_ticket integer;
  v_settings text;
  -- the ordered ticket lists end in LIMIT v_all, a bound never reached: the generic plan cannot
  -- know it, so it expects to read a few tickets and scans them in order through the
  -- (semaphore_id, no) index, stopping at the first one locked (with OFFSET 0 it read and
  -- sorted every ticket from the start position on, while the table had no statistics yet)
  v_all bigint := 2147483647;
BEGIN
  -- the re-read below guards against a concurrent shrink only with a fresh snapshot per
  -- statement, which only READ COMMITTED gives
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pg-semaphore: acquire needs a READ COMMITTED transaction, got %', current_setting('transaction_isolation')
      USING ERRCODE = 'PSB02', HINT = 'BEGIN ISOLATION LEVEL READ COMMITTED';
  END IF;
  IF cardinality(p_names) = 1 AND cardinality(p_counts) = 1 AND p_counts[1] = 1 THEN
    -- The common case, one ticket of one semaphore: nothing to undo when no ticket is free,
    -- so no subtransaction. One query finds the semaphore and locks the first free ticket
    -- from the start position on: the ordered ticket list is a subquery of its own (ORDER BY
    -- and LIMIT keep it from being merged, and Postgres never pushes a volatile condition
    -- into it), so the lock is tried row by row in ticket order and LIMIT 1 stops at the
    -- first success: it never locks a ticket it does not return.
    SELECT m.id, m.name, c.id INTO v_id, v_name, v_ticket
      FROM ${s}.semaphores m
      LEFT JOIN LATERAL (
        SELECT f.id FROM (
          SELECT t.id FROM ${s}.tickets t
           WHERE t.semaphore_id = m.id AND t.no >= coalesce(p_starts[1], 1) AND NOT (t.id = ANY (v_held))
           ORDER BY t.no LIMIT v_all) f
         WHERE pg_try_advisory_xact_lock(${s}._ns(), f.id)
         LIMIT 1) c ON true
     WHERE m.name = p_names[1];
    IF v_id IS NULL THEN
      status := 'missing';
      names := p_names;
      RETURN;
    END IF;
    IF v_ticket IS NULL AND p_starts[1] > 1 THEN
      -- wrap around: the tickets below the start position
      SELECT f.id INTO v_ticket FROM (
          SELECT t.id FROM ${s}.tickets t
           WHERE t.semaphore_id = v_id AND t.no < p_starts[1] AND NOT (t.id = ANY (v_held))
           ORDER BY t.no LIMIT v_all) f
       WHERE pg_try_advisory_xact_lock(${s}._ns(), f.id)
       LIMIT 1;
    END IF;
    IF v_ticket IS NOT NULL THEN
      -- A concurrent shrink may have deleted the ticket between our read and our lock:
      -- re-read it with a fresh snapshot (a statement of its own). If it is gone, the lock we
      -- keep is on an id no ticket will ever have again, so it costs nobody anything. The
      -- same read sets the transaction's settings, only when the ticket is there.
      SELECT 'ok', ARRAY[t.no], ARRAY[v_name], ARRAY[v_id],
             concat(set_config('pg_semaphore.held_' || to_hex(${s}._ns()), (v_held || v_ticket)::text, true),
                    CASE WHEN p_idle_timeout_ms IS NOT NULL THEN set_config('idle_in_transaction_session_timeout', p_idle_timeout_ms::text, true) END,
                    CASE WHEN p_label IS NOT NULL THEN set_config('application_name', left('pg-semaphore:' || p_label, 63), true) END)
        INTO status, tickets, ticket_semaphores, semaphore_ids, v_settings
        FROM ${s}.tickets t WHERE t.id = v_ticket;
      IF FOUND THEN
        RETURN;
      END IF;
    END IF;
    status := 'busy'; -- no free ticket, or a paused semaphore (no tickets at all)
    names := ARRAY[v_name];
    RETURN;
  END IF;
  IF p_names IS NULL OR p_counts IS NULL OR cardinality(p_names) <> cardinality(p_counts) OR cardinality(p_names) = 0 THEN
    RAISE EXCEPTION 'pg-semaphore: expected equal, non-empty arrays of names and counts' USING ERRCODE = '22023';
  END IF;
  DECLARE
    v_ns integer := ${s}._ns();
    v_got integer[] := '{}';
    v_found integer;
    v_sem record;
    v_need integer;
    v_start integer;
    v_exceeds text[] := '{}';
    v_short text;
  BEGIN
  SELECT array_agg(n.name ORDER BY n.ord) INTO names
    FROM unnest(p_names) WITH ORDINALITY AS n(name, ord)
    WHERE NOT EXISTS (SELECT 1 FROM ${s}.semaphores m WHERE m.name = n.name);
  IF names IS NOT NULL THEN
    status := 'missing';
    RETURN;
  END IF;
  semaphore_ids := '{}';
  BEGIN
    FOR v_sem IN
      SELECT m.id, m.name, m.tickets AS capacity, sum(r.cnt)::integer AS cnt, min(r.start) AS start
        FROM unnest(p_names, p_counts, coalesce(p_starts, '{}')) AS r(name, cnt, start)
        JOIN ${s}.semaphores m ON m.name = r.name
       GROUP BY m.id, m.name, m.tickets ORDER BY m.id
    LOOP
      semaphore_ids := semaphore_ids || v_sem.id;
      IF v_sem.cnt < 0 OR v_sem.cnt > 10000 THEN
        RAISE EXCEPTION 'pg-semaphore: expected a ticket count from 1 to 10000 (or 0 for all), got %', v_sem.cnt USING ERRCODE = '22023';
      END IF;
      v_need := CASE WHEN v_sem.cnt = 0 THEN v_sem.capacity ELSE v_sem.cnt END;
      IF v_sem.capacity > 0 AND v_need > v_sem.capacity THEN
        v_exceeds := v_exceeds || v_sem.name;
        RAISE EXCEPTION USING ERRCODE = 'PSB01';
      END IF;
      IF v_sem.capacity = 0 THEN
        -- a semaphore with no tickets is paused: everyone waits until it grows
        v_short := v_sem.name;
        RAISE EXCEPTION USING ERRCODE = 'PSB01';
      END IF;
      IF v_sem.cnt = 0 THEN
        -- exclusive: every ticket, including those this transaction already holds
        v_need := v_sem.capacity - (SELECT count(*) FROM ${s}.tickets t WHERE t.semaphore_id = v_sem.id AND t.id = ANY (v_held))::integer;
      END IF;
      v_start := coalesce(v_sem.start, 1);
      FOR v_ticket IN
        (SELECT t.id FROM ${s}.tickets t
          WHERE t.semaphore_id = v_sem.id AND t.no >= v_start AND NOT (t.id = ANY (v_held)) ORDER BY t.no LIMIT v_all)
        UNION ALL
        (SELECT t.id FROM ${s}.tickets t
          WHERE t.semaphore_id = v_sem.id AND t.no < v_start AND NOT (t.id = ANY (v_held)) ORDER BY t.no LIMIT v_all)
      LOOP
        EXIT WHEN v_need <= 0;
        IF pg_try_advisory_xact_lock(v_ns, v_ticket) THEN
          v_got := v_got || v_ticket;
          v_need := v_need - 1;
        END IF;
      END LOOP;
      IF v_need > 0 THEN
        v_short := v_sem.name;
        RAISE EXCEPTION USING ERRCODE = 'PSB01';
      END IF;
    END LOOP;
    -- A concurrent shrink may have deleted a ticket between our read and our lock:
    -- re-read with a fresh snapshot and give everything back if so. The same read turns
    -- the row ids (the lock keys, internal) into ticket numbers, in request order.
    SELECT count(*)::integer, array_agg(t.no ORDER BY r.ord, t.no), array_agg(m.name ORDER BY r.ord, t.no)
      INTO v_found, tickets, ticket_semaphores
      -- the tickets by their ids first (the primary key), not every ticket of the semaphore
      -- filtered by id, which the planner chose when it joined the semaphore first
      FROM (SELECT t.id, t.no, t.semaphore_id FROM ${s}.tickets t WHERE t.id = ANY (v_got) OFFSET 0) t
      JOIN ${s}.semaphores m ON m.id = t.semaphore_id
      JOIN (SELECT n.name, min(n.ord) AS ord FROM unnest(p_names) WITH ORDINALITY AS n(name, ord) GROUP BY n.name) r ON r.name = m.name;
    IF v_found <> cardinality(v_got) THEN
      RAISE EXCEPTION USING ERRCODE = 'PSB01';
    END IF;
  EXCEPTION WHEN SQLSTATE 'PSB01' THEN
    status := CASE WHEN cardinality(v_exceeds) > 0 THEN 'exceeds' ELSE 'busy' END;
    names := CASE WHEN cardinality(v_exceeds) > 0 THEN v_exceeds WHEN v_short IS NOT NULL THEN ARRAY[v_short] END;
    semaphore_ids := NULL;
    tickets := NULL;
    ticket_semaphores := NULL;
    RETURN;
  END;
  PERFORM set_config('pg_semaphore.held_' || to_hex(v_ns), (v_held || v_got)::text, true);
  END;
  IF p_idle_timeout_ms IS NOT NULL THEN
    PERFORM set_config('idle_in_transaction_session_timeout', p_idle_timeout_ms::text, true);
  END IF;
  IF p_label IS NOT NULL THEN
    PERFORM set_config('application_name', left('pg-semaphore:' || p_label, 63), true);
  END IF;
  status := 'ok';
  tickets := coalesce(tickets, '{}');
  ticket_semaphores := coalesce(ticket_semaphores, '{}');
END
$$;

-- The second half of the upgrade above: the new acquire gets the privileges the old one had
-- (so GRANTs such as docs/SECURITY.md's survive), and the old one is dropped.
DO $$
DECLARE
  v_old regprocedure := to_regprocedure('${s}._acquire_old(text[], integer[], text, integer)');
  v_new regprocedure := to_regprocedure('${s}.acquire(text[], integer[], text, integer, integer[])');
  v_acl aclitem[];
  v_grant record;
BEGIN
  IF v_old IS NULL THEN
    RETURN;
  END IF;
  SELECT p.proacl INTO v_acl FROM pg_proc p WHERE p.oid = v_old;
  IF v_acl IS NOT NULL THEN
    -- start from nothing but the owner's own right, then grant what the old one granted
    FOR v_grant IN
      SELECT DISTINCT a.grantee FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
       WHERE p.oid = v_new AND a.grantee <> p.proowner
    LOOP
      EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', v_new,
        CASE WHEN v_grant.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(v_grant.grantee)) END);
    END LOOP;
    FOR v_grant IN
      SELECT a.grantee, a.is_grantable FROM pg_proc p, aclexplode(v_acl) a
       WHERE p.oid = v_new AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
    LOOP
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', v_new,
        CASE WHEN v_grant.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(v_grant.grantee)) END,
        CASE WHEN v_grant.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
  END IF;
  EXECUTE format('DROP FUNCTION %s', v_old);
END
$$;

-- Session-level shared "I am waiting" markers, taken by a waiting process's listener
-- connection; wake() uses them to skip the NOTIFY when nobody waits.
CREATE OR REPLACE FUNCTION ${s}.watch(p_names text[]) RETURNS integer[]
LANGUAGE sql AS $$
  SELECT coalesce(array_agg(m.id ORDER BY m.id), '{}')
    FROM ${s}.semaphores m, LATERAL (SELECT pg_advisory_lock_shared(${s}._ns() # 2, m.id)) l
   WHERE m.name = ANY (p_names)
$$;

-- The same markers by semaphore id, one per element (repeats count), for re-registering
-- waiters after the LISTEN connection was replaced.
CREATE OR REPLACE FUNCTION ${s}.watch_ids(p_ids integer[]) RETURNS void
LANGUAGE sql AS $$
  SELECT count(pg_advisory_lock_shared(${s}._ns() # 2, i)) FROM unnest(p_ids) i;
$$;

CREATE OR REPLACE FUNCTION ${s}.unwatch(p_ids integer[]) RETURNS void
LANGUAGE sql AS $$
  SELECT count(pg_advisory_unlock_shared(${s}._ns() # 2, i)) FROM unnest(p_ids) i;
$$;

-- Rolling upgrade: the functions new in 0004_functions or later that do not exist yet get the
-- privileges of wake(integer[]) once they are created (the block after wake(integer[])), so
-- a worker role granted the old list of docs/SECURITY.md (PUBLIC's right revoked by default)
-- keeps waking and being woken after migrate(). Applied again, nothing is new: grants kept.
DO $$
BEGIN
  PERFORM set_config('pg_semaphore.new_functions', concat_ws(';',
    CASE WHEN to_regprocedure('${s}.hears()') IS NULL THEN 'hears()' END,
    CASE WHEN to_regprocedure('${s}.wake(integer[], integer)') IS NULL THEN 'wake(integer[], integer)' END,
    CASE WHEN to_regprocedure('${s}.wake(integer[], integer, integer)') IS NULL THEN 'wake(integer[], integer, integer)' END,
    CASE WHEN to_regprocedure('${s}.acquire_session(integer[], text[], integer[], integer[], integer[])') IS NULL
      THEN 'acquire_session(integer[], text[], integer[], integer[], integer[])' END,
    CASE WHEN to_regprocedure('${s}.release_session(integer[], integer[], integer)') IS NULL
      THEN 'release_session(integer[], integer[], integer)' END,
    CASE WHEN to_regprocedure('${s}.hears_slot(integer[])') IS NULL THEN 'hears_slot(integer[])' END,
    CASE WHEN to_regprocedure('${s}.watch_slot(text[], integer)') IS NULL THEN 'watch_slot(text[], integer)' END,
    CASE WHEN to_regprocedure('${s}.unwatch_slot(integer[], integer)') IS NULL THEN 'unwatch_slot(integer[], integer)' END), false);
END
$$;

-- Marks the session (a LISTEN connection) as one that NOTIFYs reach: its own probe,
-- sent from another connection, arrived. wake() names only such sessions (a marker taken
-- through PgBouncer in transaction mode stays on a server connection no listener hears).
CREATE OR REPLACE FUNCTION ${s}.hears() RETURNS void
LANGUAGE sql AS $$
  SELECT pg_advisory_lock_shared(${s}._ns() # 3, 0)
$$;

-- watch() and unwatch() with the caller's slot (from hears_slot()): each waiter marker is
-- taken, or given back, a second time under the slot, (ns # (slot << 8 | 5), id), which wake() tries.
-- (Names of their own rather than overloads: a GRANT by name alone keeps naming one function.)
CREATE OR REPLACE FUNCTION ${s}.watch_slot(p_names text[], p_slot integer) RETURNS integer[]
LANGUAGE sql AS $$
  SELECT coalesce(array_agg(m.id ORDER BY m.id), '{}')
    FROM ${s}.semaphores m,
         LATERAL (SELECT pg_advisory_lock_shared(${s}._ns() # 2, m.id),
                         pg_advisory_lock_shared(${s}._ns() # ((p_slot << 8) | 5), m.id)) l
   WHERE m.name = ANY (p_names)
$$;

CREATE OR REPLACE FUNCTION ${s}.unwatch_slot(p_ids integer[], p_slot integer) RETURNS void
LANGUAGE sql AS $$
  SELECT count(pg_advisory_unlock_shared(${s}._ns() # ((p_slot << 8) | 5), i)) + count(pg_advisory_unlock_shared(${s}._ns() # 2, i))
    FROM unnest(p_ids) i;
$$;

-- hears(), and a slot: the lowest slot number no other session holds, (ns # 4, slot)
-- exclusive at session level, returned (NULL when all 4,096 are taken). The waiter markers
-- the session holds already (p_ids, one per mark) are taken again under the slot, as
-- watch_slot() takes them. wake() names a slot holder by its slot: '<ns>:<id>:-<slot + 1>'.
-- Call it once per session.
CREATE OR REPLACE FUNCTION ${s}.hears_slot(p_ids integer[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  v_slot integer;
BEGIN
  PERFORM pg_advisory_lock_shared(${s}._ns() # 3, 0);
  FOR v_slot IN 0..4095 LOOP
    IF pg_try_advisory_lock(${s}._ns() # 4, v_slot) THEN
      PERFORM pg_advisory_lock_shared(${s}._ns() # ((v_slot << 8) | 5), i) FROM unnest(coalesce(p_ids, '{}')) i;
      RETURN v_slot;
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

-- Called when a holder gives its tickets back: tells waiting processes (LISTEN
-- pg_semaphore) that tickets of these semaphores came free. Sends nothing, and so writes
-- nothing, when no process is waiting on them. Each NOTIFY names one waiting process, the
-- backend pid of its LISTEN connection (payload 'ns:id:pid'; 'ns:id', for every waiting
-- process, when none of them is known to hear NOTIFYs, see hears()), so that one process tries
-- per freed semaphore instead of every waiting one: the first waiting pid after p_after
-- (the releasing process's own LISTEN pid, so wake-ups go round the waiting processes in
-- turn), or a random one when p_after is NULL. Run it in the holding transaction just
-- before COMMIT (a NOTIFY is delivered after the commit, once the locks are gone; a
-- waiter taking its marker meanwhile blocks on the exclusive check until then) or after
-- the COMMIT/ROLLBACK.
-- A process named by a NOTIFY that finds nothing to use it (its waiter just left, or its try
-- came back busy on another semaphore of its request) relays it: wake(ids, own pid, origin),
-- p_origin being the LISTEN pid of the first process that could not use it; the payload carries it ('ns:id:pid:origin'), and nothing is sent
-- when the next pid would be the origin or p_after itself (the wake-up went round).
CREATE OR REPLACE FUNCTION ${s}.wake(p_ids integer[], p_after integer, p_origin integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  v_id integer;
  v_pid integer;
  v_busy integer[] := '{}';
  v_rest integer[] := '{}';
  v_ns integer := ${s}._ns();
  v_after integer;
  v_slot integer;
  v_s integer;
  v_gap integer;
  v_tries integer;
  v_up boolean;
  v_sent integer := 0;
BEGIN
  -- A marker whose exclusive try fails is held shared by waiters, or exclusively by another
  -- release doing this same check until its COMMIT (a shared try, given back at once, tells the
  -- two apart). In the second case nobody waits yet, but a waiter may be queued for the marker
  -- behind that release and retry once it commits, while this release's tickets are still
  -- held: it is sent the NOTIFY without a pid, which every listener hears after this COMMIT,
  -- and nothing is searched (the search below, down to pg_locks, found nobody there and ended
  -- in that NOTIFY all the same). A relay sends none (relays never go to everyone).
  FOREACH v_id IN ARRAY coalesce(p_ids, '{}') LOOP
    IF NOT pg_try_advisory_xact_lock(v_ns # 2, v_id) THEN
      IF (CASE WHEN pg_try_advisory_lock_shared(v_ns # 2, v_id) THEN pg_advisory_unlock_shared(v_ns # 2, v_id) ELSE false END) THEN
        v_busy := v_busy || v_id;
      ELSIF p_origin IS NULL THEN
        PERFORM pg_notify('pg_semaphore', v_ns || ':' || v_id);
        v_sent := v_sent + 1;
      END IF;
    END IF;
  END LOOP;
  IF cardinality(v_busy) = 0 THEN
    RETURN v_sent;
  END IF;
  -- p_after < 0: the releaser's LISTEN session holds slot -p_after - 1 (see hears_slot()), so
  -- the next waiting process is found by its slot markers, without reading pg_locks: the first
  -- slot after the releaser's that waits (wrapping round, the releaser's own last), or for a
  -- relay nothing when that one is the origin's or the relayer's (it went round; a relay whose
  -- origin is a pid, named through pg_locks, starts again from the relayer). A slot waits when
  -- its marker (ns # (slot << 8 | 5), id) is held (the exclusive try fails) and the slot is
  -- claimed ((ns # 4, slot) cannot be taken shared): a marker try of another release at the
  -- same moment also fails the try, and is told apart so. Upwards the search stops after 8
  -- unclaimed slots in a row, and after 64 tries in all. Each try that succeeds keeps its lock
  -- until the end of the transaction (a waiter taking that marker meanwhile waits for the
  -- COMMIT, as with the waiter marker; no lock of a try outlives it). A semaphore whose waiters
  -- are not found so (older library versions, sessions without a slot, a waiter between its
  -- two markers, slots above a hole of 8 or past the 64 tries) goes on to pg_locks below, for
  -- a first-hand wake-up only: a relay stops there.
  -- A first-hand wake-up from a releaser without a slot (p_after NULL: wake(ids), wake_names(),
  -- a process that never waited) searches the slots too, from one of the first 8 at
  -- random: the pg_locks read it replaces grows with every lock held (8 ms a call with 200
  -- holding transactions in the benchmark's large cap).
  IF p_after < -4096 THEN
    p_after := NULL;
  END IF;
  IF p_after < 0 THEN
    v_after := -p_after - 1;
    IF p_origin >= 0 OR p_origin < -4096 THEN
      p_origin := p_after;
    END IF;
  ELSIF p_after IS NULL AND p_origin IS NULL THEN
    v_after := floor(random() * 8)::integer - 1;
  END IF;
  IF v_after IS NOT NULL THEN
    FOREACH v_id IN ARRAY v_busy LOOP
      v_slot := NULL;
      v_s := v_after + 1;
      v_gap := 0;
      v_tries := 0;
      v_up := true;
      LOOP
        IF v_up AND (v_s > 4095 OR v_gap >= 8) THEN
          v_up := false;
          v_s := 0;
        END IF;
        EXIT WHEN (NOT v_up AND v_s > v_after) OR v_tries >= 64;
        v_tries := v_tries + 1;
        IF NOT pg_try_advisory_xact_lock(v_ns # ((v_s << 8) | 5), v_id) THEN
          IF NOT pg_try_advisory_xact_lock_shared(v_ns # 4, v_s) THEN
            v_slot := v_s;
            EXIT;
          END IF;
          v_gap := v_gap + 1;
        ELSIF v_up THEN
          IF pg_try_advisory_xact_lock_shared(v_ns # 4, v_s) THEN
            v_gap := v_gap + 1;
          ELSE
            v_gap := 0;
          END IF;
        END IF;
        v_s := v_s + 1;
      END LOOP;
      IF p_origin IS NOT NULL AND (-v_slot - 1 = p_origin OR v_slot = v_after) THEN
        CONTINUE;
      END IF;
      IF v_slot IS NOT NULL THEN
        PERFORM pg_notify('pg_semaphore', v_ns || ':' || v_id || ':' || (-v_slot - 1) || coalesce(':' || p_origin, ''));
        v_sent := v_sent + 1;
      ELSIF p_origin IS NULL THEN
        v_rest := v_rest || v_id;
      END IF;
    END LOOP;
    IF cardinality(v_rest) = 0 THEN
      RETURN v_sent;
    END IF;
    v_busy := v_rest;
    p_after := NULL;
  END IF;
  -- pg_locks is read once for all the semaphores that have waiters: the sessions holding
  -- both a semaphore's waiter marker and the "NOTIFYs reach me" mark, one picked per semaphore
  FOR v_id, v_pid IN
    WITH l AS MATERIALIZED (
      SELECT l.pid, l.classid::bigint AS classid, l.objid::bigint AS objid FROM pg_locks l
       WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.mode = 'ShareLock'
         AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
         AND ((l.classid::bigint = ((${s}._ns() # 2)::bigint + 4294967296) % 4294967296 AND l.objid::bigint = ANY (v_busy))
           OR (l.classid::bigint = ((${s}._ns() # 3)::bigint + 4294967296) % 4294967296 AND l.objid = 0))
    ), waiting AS (
      SELECT DISTINCT w.objid::integer AS id, w.pid FROM l w
       WHERE w.classid = ((${s}._ns() # 2)::bigint + 4294967296) % 4294967296
         AND EXISTS (SELECT 1 FROM l h WHERE h.pid = w.pid AND h.classid = ((${s}._ns() # 3)::bigint + 4294967296) % 4294967296)
    )
    SELECT b.id, (SELECT w.pid FROM waiting w WHERE w.id = b.id
                   ORDER BY CASE WHEN p_after IS NULL THEN random() END, w.pid <= p_after, w.pid LIMIT 1)
      FROM unnest(v_busy) WITH ORDINALITY AS b(id, n) ORDER BY b.n
  LOOP
    IF p_origin IS NULL THEN
      PERFORM pg_notify('pg_semaphore', ${s}._ns() || ':' || v_id || coalesce(':' || v_pid, ''));
      v_sent := v_sent + 1;
    ELSIF v_pid IS NOT NULL AND v_pid <> p_origin AND v_pid IS DISTINCT FROM p_after THEN
      PERFORM pg_notify('pg_semaphore', ${s}._ns() || ':' || v_id || ':' || v_pid || ':' || p_origin);
      v_sent := v_sent + 1;
    END IF;
  END LOOP;
  RETURN v_sent;
END
$$;

CREATE OR REPLACE FUNCTION ${s}.wake(p_ids integer[], p_after integer) RETURNS integer
LANGUAGE sql AS $$
  SELECT ${s}.wake(p_ids, p_after, NULL::integer)
$$;

CREATE OR REPLACE FUNCTION ${s}.wake(p_ids integer[]) RETURNS integer
LANGUAGE sql AS $$
  SELECT ${s}.wake(p_ids, NULL::integer)
$$;

-- Session holding (PgSemaphoreOptions.holding = 'session'): one connection per process holds
-- every ticket that process holds, as session-level advisory locks on the same keys as
-- acquire's transaction-level ones, so both kinds count against the same cap. Call it outside
-- a transaction block (autocommit): the re-read below needs a fresh snapshot per statement.
-- Serves several requests in one call: position i asks p_counts[i] tickets of p_names[i] for
-- request p_req[i]; each request (the positions sharing a number) is all or nothing, served in
-- the order of the numbers. One row per request, with acquire's statuses and the tickets'
-- row ids (the lock keys: pg_advisory_unlock needs them) and the capacity of its first semaphore. p_held lists the ticket ids this
-- session already holds for other holders of the process: a session lock taken twice by one
-- session succeeds (its count goes up), which would hand one ticket to two holders, so those
-- are never taken, nor those taken earlier in the same call. A busy request gives back what
-- it locked (a subtransaction's rollback does not release session locks). Never writes.
CREATE OR REPLACE FUNCTION ${s}.acquire_session(
  p_req integer[], p_names text[], p_counts integer[], p_held integer[] DEFAULT NULL, p_starts integer[] DEFAULT NULL)
RETURNS TABLE (req integer, status text, tickets integer[], ticket_semaphores text[], semaphore_ids integer[], ticket_ids integer[], names text[],
                capacity integer)
LANGUAGE plpgsql AS $$
DECLARE
  v_ns integer := ${s}._ns();
  v_held integer[] := coalesce(p_held, '{}');
  v_got integer[];
  v_taken integer[];
  v_sem record;
  v_need integer;
  v_start integer;
  v_short text;
  v_exceeds text;
  v_found integer;
  v_all bigint := 2147483647; -- see acquire
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'pg-semaphore: acquire_session needs READ COMMITTED, got %', current_setting('transaction_isolation')
      USING ERRCODE = 'PSB02', HINT = 'SET default_transaction_isolation = ''read committed''';
  END IF;
  IF p_req IS NULL OR p_names IS NULL OR p_counts IS NULL OR cardinality(p_names) = 0
     OR cardinality(p_req) <> cardinality(p_names) OR cardinality(p_names) <> cardinality(p_counts) THEN
    RAISE EXCEPTION 'pg-semaphore: expected equal, non-empty arrays of request numbers, names and counts' USING ERRCODE = '22023';
  END IF;
  FOR req IN SELECT DISTINCT r.n FROM unnest(p_req) AS r(n) ORDER BY r.n LOOP
    status := NULL; tickets := NULL; ticket_semaphores := NULL; semaphore_ids := NULL; ticket_ids := NULL; capacity := NULL;
    SELECT array_agg(n.name ORDER BY n.ord) INTO names
      FROM unnest(p_names, p_req) WITH ORDINALITY AS n(name, rq, ord)
     WHERE n.rq = req AND NOT EXISTS (SELECT 1 FROM ${s}.semaphores m WHERE m.name = n.name);
    IF names IS NOT NULL THEN
      status := 'missing';
      RETURN NEXT;
      CONTINUE;
    END IF;
    v_got := '{}';
    v_short := NULL;
    v_exceeds := NULL;
    FOR v_sem IN
      SELECT m.id, m.name, m.tickets AS capacity, sum(r.cnt)::integer AS cnt, min(r.start) AS start
        FROM unnest(p_names, p_counts, p_req, coalesce(p_starts, '{}')) AS r(name, cnt, rq, start)
        JOIN ${s}.semaphores m ON m.name = r.name
       WHERE r.rq = req
       GROUP BY m.id, m.name, m.tickets ORDER BY m.id
    LOOP
      capacity := coalesce(capacity, v_sem.capacity); -- the first semaphore's (withMutex checks it)
      IF v_sem.cnt < 0 OR v_sem.cnt > 10000 THEN
        PERFORM pg_advisory_unlock(v_ns, x.id) FROM unnest(v_got) AS x(id);
        RAISE EXCEPTION 'pg-semaphore: expected a ticket count from 1 to 10000 (or 0 for all), got %', v_sem.cnt USING ERRCODE = '22023';
      END IF;
      -- tickets this session holds belong to other holders of the process: never counted as free
      v_need := CASE WHEN v_sem.cnt = 0 THEN v_sem.capacity ELSE v_sem.cnt END;
      IF v_sem.capacity > 0 AND v_need > v_sem.capacity THEN
        v_exceeds := v_sem.name;
        EXIT;
      END IF;
      IF v_sem.capacity = 0 THEN
        v_short := v_sem.name; -- paused: everyone waits until it grows
        EXIT;
      END IF;
      v_start := coalesce(v_sem.start, 1);
      -- the first free tickets from the start position, then below it (see acquire's fast
      -- path: the ordered list is a subquery of its own, so LIMIT stops at the last one needed
      -- and no ticket is locked that is not returned; its own LIMIT v_all is acquire's too)
      SELECT array_agg(f.id) INTO v_taken FROM (
        SELECT o.id FROM (
          SELECT t.id FROM ${s}.tickets t
           WHERE t.semaphore_id = v_sem.id AND t.no >= v_start AND NOT (t.id = ANY (v_held || v_got))
           ORDER BY t.no LIMIT v_all) o
         WHERE pg_try_advisory_lock(v_ns, o.id)
         LIMIT v_need) f;
      v_got := v_got || coalesce(v_taken, '{}');
      v_need := v_need - coalesce(cardinality(v_taken), 0);
      IF v_need > 0 AND v_start > 1 THEN
        SELECT array_agg(f.id) INTO v_taken FROM (
          SELECT o.id FROM (
            SELECT t.id FROM ${s}.tickets t
             WHERE t.semaphore_id = v_sem.id AND t.no < v_start AND NOT (t.id = ANY (v_held || v_got))
             ORDER BY t.no LIMIT v_all) o
           WHERE pg_try_advisory_lock(v_ns, o.id)
           LIMIT v_need) f;
        v_got := v_got || coalesce(v_taken, '{}');
        v_need := v_need - coalesce(cardinality(v_taken), 0);
      END IF;
      IF v_need > 0 THEN
        v_short := v_sem.name;
        EXIT;
      END IF;
    END LOOP;
    IF v_short IS NULL AND v_exceeds IS NULL THEN
      -- a concurrent shrink may have deleted a ticket between our read and our lock: re-read
      -- with a fresh snapshot; the same read turns the ids into numbers, in request order
      SELECT count(*)::integer, array_agg(t.no ORDER BY r.ord, t.no), array_agg(m.name ORDER BY r.ord, t.no),
             array_agg(t.id ORDER BY r.ord, t.no), array_agg(DISTINCT m.id)
        INTO v_found, tickets, ticket_semaphores, ticket_ids, semaphore_ids
        FROM (SELECT t.id, t.no, t.semaphore_id FROM ${s}.tickets t WHERE t.id = ANY (v_got) OFFSET 0) t -- by id first (see acquire)
        JOIN ${s}.semaphores m ON m.id = t.semaphore_id
        JOIN (SELECT n.name, min(n.ord) AS ord FROM unnest(p_names, p_req) WITH ORDINALITY AS n(name, rq, ord)
               WHERE n.rq = req GROUP BY n.name) r ON r.name = m.name;
      IF v_found = cardinality(v_got) THEN
        status := 'ok';
        tickets := coalesce(tickets, '{}');
        ticket_semaphores := coalesce(ticket_semaphores, '{}');
        ticket_ids := coalesce(ticket_ids, '{}');
        semaphore_ids := coalesce(semaphore_ids, '{}');
        v_held := v_held || v_got;
        RETURN NEXT;
        CONTINUE;
      END IF;
    END IF;
    PERFORM pg_advisory_unlock(v_ns, x.id) FROM unnest(v_got) AS x(id);
    status := CASE WHEN v_exceeds IS NOT NULL THEN 'exceeds' ELSE 'busy' END;
    names := CASE WHEN v_exceeds IS NOT NULL THEN ARRAY[v_exceeds] WHEN v_short IS NOT NULL THEN ARRAY[v_short] END;
    tickets := NULL; ticket_semaphores := NULL; ticket_ids := NULL; semaphore_ids := NULL;
    RETURN NEXT;
  END LOOP;
END
$$;

-- Returns tickets held by acquire_session (their row ids) and wakes the next process waiting
-- on these semaphores after p_after (see wake), in one statement. Returns wake's count.
CREATE OR REPLACE FUNCTION ${s}.release_session(p_ticket_ids integer[], p_semaphore_ids integer[], p_after integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_unlock(${s}._ns(), x.id) FROM unnest(p_ticket_ids) AS x(id);
  RETURN ${s}.wake(p_semaphore_ids, p_after);
END
$$;

-- The second half of the rolling upgrade above: the functions that were new get the
-- privileges wake(integer[]) has (none changed when it has its default ones).
DO $$
DECLARE
  v_src regprocedure := to_regprocedure('${s}.wake(integer[])');
  v_acl aclitem[];
  v_name text;
  v_new regprocedure;
  v_grant record;
BEGIN
  SELECT p.proacl INTO v_acl FROM pg_proc p WHERE p.oid = v_src;
  FOR v_name IN SELECT unnest(string_to_array(nullif(current_setting('pg_semaphore.new_functions', true), ''), ';')) LOOP
    v_new := to_regprocedure('${s}.' || v_name);
    CONTINUE WHEN v_acl IS NULL OR v_new IS NULL;
    FOR v_grant IN
      SELECT DISTINCT a.grantee FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
       WHERE p.oid = v_new AND a.grantee <> p.proowner
    LOOP
      EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', v_new,
        CASE WHEN v_grant.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(v_grant.grantee)) END);
    END LOOP;
    FOR v_grant IN
      SELECT a.grantee, a.is_grantable FROM aclexplode(v_acl) a, pg_proc p
       WHERE p.oid = v_src AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
    LOOP
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', v_new,
        CASE WHEN v_grant.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(v_grant.grantee)) END,
        CASE WHEN v_grant.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
  END LOOP;
  PERFORM set_config('pg_semaphore.new_functions', '', false);
END
$$;

-- The same by semaphore name, for holders in plain SQL: send it in one string with the
-- COMMIT (or ROLLBACK) that returns the tickets, e.g.
--   COMMIT; SELECT semaphore.wake_names('{openai}');
-- Returns how many NOTIFYs it sent (0 when nobody waits; unknown names are skipped).
CREATE OR REPLACE FUNCTION ${s}.wake_names(p_names text[]) RETURNS integer
LANGUAGE sql AS $$
  SELECT ${s}.wake(array_agg(m.id ORDER BY m.id)) FROM ${s}.semaphores m WHERE m.name = ANY (p_names)
$$;

-- BullMQ wrapper: remember a job that was put back to wait for tickets of these semaphores.
-- Returns how many jobs wait ahead of it (the most over the semaphores) and the smallest
-- capacity among them, so the caller can pick a sensible delay.
CREATE OR REPLACE FUNCTION ${s}.enqueue_job(p_names text[], p_queue text, p_job_id text, OUT ahead integer, OUT capacity integer)
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ${s}.waiting_jobs (semaphore_id, queue, job_id)
  SELECT m.id, p_queue, p_job_id FROM ${s}.semaphores m WHERE m.name = ANY (p_names)
  ON CONFLICT ON CONSTRAINT waiting_jobs_key DO NOTHING;
  SELECT coalesce(max((SELECT count(*) FROM ${s}.waiting_jobs o WHERE o.semaphore_id = w.semaphore_id AND o.id < w.id)), 0)::integer,
         min(m.tickets)::integer
    INTO ahead, capacity
    FROM ${s}.waiting_jobs w JOIN ${s}.semaphores m ON m.id = w.semaphore_id
   WHERE w.queue = p_queue AND w.job_id = p_job_id;
END
$$;

-- BullMQ wrapper: take the oldest waiting jobs of these semaphores (in the queues the caller
-- can reach) so the caller can promote them. Each job is returned once and forgotten.
CREATE OR REPLACE FUNCTION ${s}.dequeue_jobs(p_semaphore_ids integer[], p_queues text[], p_limit integer DEFAULT 1)
RETURNS TABLE (queue text, job_id text)
LANGUAGE sql AS $$
  WITH picked AS (
    SELECT w.id, w.queue, w.job_id FROM ${s}.waiting_jobs w
     WHERE w.semaphore_id = ANY (p_semaphore_ids) AND w.queue = ANY (p_queues)
     ORDER BY w.id
     LIMIT p_limit
     FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM ${s}.waiting_jobs w USING picked p
     WHERE w.queue = p.queue AND w.job_id = p.job_id
  )
  SELECT p.queue, p.job_id FROM picked p ORDER BY p.id
$$;

-- BullMQ wrapper: a job got its tickets (or gave up); stop promoting it.
CREATE OR REPLACE FUNCTION ${s}.forget_job(p_queue text, p_job_id text) RETURNS void
LANGUAGE sql AS $$
  DELETE FROM ${s}.waiting_jobs WHERE queue = p_queue AND job_id = p_job_id
$$;

-- Who holds tickets right now, from Postgres's own lock table.
CREATE OR REPLACE FUNCTION ${s}.holders(p_name text DEFAULT NULL)
RETURNS TABLE (name text, ticket integer, pid integer, application_name text, client_addr inet, since timestamptz, label text)
LANGUAGE sql STABLE AS $$
  -- since: when the holding transaction began; null for a session holder (holding: 'session'),
  -- whose transaction, if any, is just a statement it happens to run
  SELECT m.name, t.no, l.pid, a.application_name, a.client_addr,
         CASE WHEN a.application_name LIKE 'pg-semaphore:session %' THEN NULL ELSE a.xact_start END,
         CASE WHEN a.application_name LIKE 'pg-semaphore:%' THEN substr(a.application_name, 14) END
    FROM pg_locks l
    JOIN ${s}.tickets t ON t.id = l.objid::bigint
    JOIN ${s}.semaphores m ON m.id = t.semaphore_id
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     AND l.classid::bigint = (${s}._ns()::bigint + 4294967296) % 4294967296
     AND (p_name IS NULL OR m.name = p_name)
   ORDER BY m.name, t.no
$$;

CREATE OR REPLACE FUNCTION ${s}.list()
RETURNS TABLE (name text, tickets integer, held integer, created_at timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE AS $$
  SELECT m.name, m.tickets, coalesce(h.held, 0)::integer, m.created_at, m.updated_at
    FROM ${s}.semaphores m
    LEFT JOIN (SELECT h.name, count(*) AS held FROM ${s}.holders() h GROUP BY h.name) h ON h.name = m.name
   ORDER BY m.name
$$;
`;
}
