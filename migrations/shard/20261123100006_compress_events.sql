-- Events are mostly JSON text that repeats from row to row: InnoDB's page
-- compression (zlib, 8 KB pages) halves them on disk and in the buffer pool
-- (see BENCHMARKS.md, storage). Supported alike by MySQL 8.0+ and MariaDB
-- 10.11 with innodb_file_per_table (the default on both). On an existing
-- shard this rebuilds the table in place; writes continue during the rebuild.
ALTER TABLE events ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8;
