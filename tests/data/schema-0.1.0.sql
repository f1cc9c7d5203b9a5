-- The site database as fitsflow 0.1.0 created it (metadata.create_all, SQLite), before
-- schema migrations existed: tests/unit/test_migrations.py upgrades it.
CREATE TABLE archive_files (
	id INTEGER NOT NULL, 
	instrument VARCHAR(32) NOT NULL, 
	image VARCHAR(80) NOT NULL, 
	group_id VARCHAR(64) NOT NULL, 
	snap INTEGER NOT NULL, 
	raft VARCHAR(16) NOT NULL, 
	sensor VARCHAR(16) NOT NULL, 
	obs_day VARCHAR(8) NOT NULL, 
	path VARCHAR(512) NOT NULL, 
	size INTEGER NOT NULL, 
	checksum VARCHAR(80) NOT NULL, 
	ingested_at DATETIME NOT NULL, 
	protected BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT archive_files_data_id UNIQUE (instrument, image, raft, sensor)
);
CREATE TABLE controller_assignments (
	assignment VARCHAR(200) NOT NULL, 
	image VARCHAR(80) NOT NULL, 
	forwarder VARCHAR(64), 
	sensors TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	sent BOOLEAN NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (assignment)
);
CREATE TABLE controller_expected (
	image VARCHAR(80) NOT NULL, 
	sensors TEXT NOT NULL, 
	announced_at FLOAT NOT NULL, 
	resends INTEGER NOT NULL, 
	last_resend_at FLOAT, 
	state VARCHAR(16) NOT NULL, 
	PRIMARY KEY (image)
);
CREATE TABLE controller_handoffs (
	"key" VARCHAR(120) NOT NULL, 
	image VARCHAR(80) NOT NULL, 
	incoming VARCHAR(512) NOT NULL, 
	oods VARCHAR(512) NOT NULL, 
	archive VARCHAR(512) NOT NULL, 
	size VARCHAR(20) NOT NULL, 
	checksum VARCHAR(80) NOT NULL, 
	inode VARCHAR(80) NOT NULL, 
	data_id TEXT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE oods_files (
	id INTEGER NOT NULL, 
	instrument VARCHAR(32) NOT NULL, 
	image VARCHAR(80) NOT NULL, 
	group_id VARCHAR(64) NOT NULL, 
	snap INTEGER NOT NULL, 
	raft VARCHAR(16) NOT NULL, 
	sensor VARCHAR(16) NOT NULL, 
	obs_day VARCHAR(8) NOT NULL, 
	path VARCHAR(512) NOT NULL, 
	size INTEGER NOT NULL, 
	checksum VARCHAR(80) NOT NULL, 
	ingested_at DATETIME NOT NULL, 
	protected BOOLEAN NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT oods_files_data_id UNIQUE (instrument, image, raft, sensor)
);
CREATE TABLE rec_daemons (
	ident VARCHAR(200) NOT NULL, 
	host VARCHAR(200) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	target VARCHAR(16) NOT NULL, 
	status TEXT NOT NULL, 
	first_seen FLOAT NOT NULL, 
	last_seen FLOAT NOT NULL, 
	PRIMARY KEY (ident)
);
CREATE TABLE rec_files (
	image VARCHAR(80) NOT NULL, 
	sensor VARCHAR(40) NOT NULL, 
	delivered_at FLOAT, 
	oods_requested_at FLOAT, 
	archive_requested_at FLOAT, 
	oods_at FLOAT, 
	oods_status INTEGER, 
	archive_at FLOAT, 
	archive_status INTEGER, 
	PRIMARY KEY (image, sensor)
);
CREATE TABLE rec_images (
	image VARCHAR(80) NOT NULL, 
	group_id VARCHAR(64), 
	sensors_expected INTEGER, 
	started_at FLOAT, 
	end_readout_at FLOAT, 
	readout_at FLOAT, 
	missing INTEGER NOT NULL, 
	header_at FLOAT, 
	header_partial BOOLEAN, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (image)
);
CREATE TABLE rec_messages (
	msg_id VARCHAR(64) NOT NULL, 
	type VARCHAR(40) NOT NULL, 
	destination VARCHAR(200) NOT NULL, 
	image VARCHAR(80), 
	sender VARCHAR(200) NOT NULL, 
	sent VARCHAR(40) NOT NULL, 
	received_at FLOAT NOT NULL, 
	body TEXT NOT NULL, 
	PRIMARY KEY (msg_id)
);
CREATE INDEX ix_archive_files_ingested_at ON archive_files (ingested_at);
CREATE INDEX ix_archive_files_obs_day ON archive_files (obs_day);
CREATE INDEX ix_controller_assignments_image ON controller_assignments (image);
CREATE INDEX ix_controller_expected_state ON controller_expected (state);
CREATE INDEX ix_controller_handoffs_image ON controller_handoffs (image);
CREATE INDEX ix_oods_files_ingested_at ON oods_files (ingested_at);
CREATE INDEX ix_oods_files_obs_day ON oods_files (obs_day);
CREATE INDEX ix_rec_images_updated_at ON rec_images (updated_at);
CREATE INDEX ix_rec_messages_image ON rec_messages (image);
CREATE INDEX ix_rec_messages_received_at ON rec_messages (received_at);
CREATE INDEX ix_rec_messages_type ON rec_messages (type);
