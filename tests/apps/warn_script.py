"""A plain script without logging configuration: its records reach stderr through logging.lastResort.

It also logs a database error (SQLAlchemy's text quotes the bound value ``APP_CANARY``).
"""

import logging
import os

from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

log = logging.getLogger("batch")
log.info("not shown: below the root logger's WARNING level")
log.warning("disk almost full: %s%% used", 93)  # no handler anywhere: logging.lastResort prints it

engine = create_engine("sqlite://")
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE users (email TEXT UNIQUE)"))
try:
    with engine.begin() as conn:
        for _ in range(2):
            conn.execute(text("INSERT INTO users (email) VALUES (:email)"), {"email": os.environ["APP_CANARY"]})
except IntegrityError:
    log.exception("import failed")
logging.warning("done")  # the module-level function runs logging.basicConfig() first
