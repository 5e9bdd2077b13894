-- 0014_analytics_cohorts: the ticket figures of get_metrics from the roll-up. Their definitions are
-- cohorts of the whole period (tickets opened in it escalated by its end, resolved once per ticket
-- at their last resolution in it, AI-resolved when their conversation never had a staff reply), so a
-- day cannot hold a figure; it holds count cells keyed by the days a range has to compare, and the
-- sorted values a percentile needs (tools/ticket_cohorts.py says what each kind means and how a
-- range of whole days is summed from them).
--
-- Values are kept packed: float8send of each value, concatenated in order (8 bytes each,
-- big-endian). A year of them is concatenated by string_agg and read by numpy in one piece; a
-- float8[] is sent element by element (array_send took 46 ms for a year of reply latencies).
--
-- Each cell belongs to the latest day it depends on (`day`): computing a day replaces that day's
-- cells, and a later event never changes a cell of an earlier day, so re-running a day gives the
-- same rows and only the days the roll-up recomputes can change.

CREATE TABLE analytics_ticket_cells (
    day      date NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('opened_escalated', 'first_response', 'escalated', 'resolved',
                                           'resolved_conv', 'superseded', 'human_resolved')),
    channel  text NOT NULL CHECK (channel IN ('email', 'whatsapp', 'web_form')),
    d1       date,
    d2       date,
    n        integer NOT NULL CHECK (n > 0),
    vals     bytea CHECK (length(vals) = 8 * n)
);
CREATE INDEX analytics_ticket_cells_day_idx ON analytics_ticket_cells (day, kind);

-- The day's reply latencies, packed likewise (latency_ms keeps them as an array for reports); on
-- the 'all' row, only those recorded with no channel, so that a total (the channels' plus these)
-- reads each value once. Not compressed: random doubles do not compress; reading skips the attempt.
ALTER TABLE analytics_daily ADD COLUMN latency_packed bytea NOT NULL DEFAULT '';
ALTER TABLE analytics_daily ALTER COLUMN latency_packed SET STORAGE EXTERNAL;

-- The roll-up and the live edges of a period read tickets and their history by time.
CREATE INDEX ticket_events_created_idx ON ticket_events (created_at);
CREATE INDEX tickets_created_idx ON tickets (created_at);
CREATE INDEX tickets_first_response_idx ON tickets (first_response_at) WHERE first_response_at IS NOT NULL;

-- Days rolled up before this migration have no cells: forget them, so that get_metrics computes
-- them live until the job (which starts over from the first day with data, up to a year back)
-- or `crm-mcp analytics backfill` has rolled them up again with their cells.
DELETE FROM analytics_daily;
