#!/bin/sh
# Runs nginx as one instance of a rota fabric role.
#   run-nginx.sh PORT DISK_FOLDER INSTANCE
# The config and every file nginx writes live on the instance's differencing
# disk, so a reimage starts it clean; this script is the role's base image.
set -eu
port=$1
disk=$2
instance=$3
mkdir -p "$disk/tmp" "$disk/logs"
cat >"$disk/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $disk/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $disk/tmp/body;
    proxy_temp_path $disk/tmp/proxy;
    fastcgi_temp_path $disk/tmp/fastcgi;
    uwsgi_temp_path $disk/tmp/uwsgi;
    scgi_temp_path $disk/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location = /health { default_type text/plain; return 200 "ok\n"; }
        location / { default_type text/plain; return 200 "nginx $instance\n"; }
    }
}
CONF
# /usr/sbin is not on every PATH.
nginx=$(command -v nginx || echo /usr/sbin/nginx)
exec "$nginx" -p "$disk" -c "$disk/nginx.conf"
