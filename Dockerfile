FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    DATA_DIR=/data STATIC_ROOT=/app/staticfiles
WORKDIR /app
# CPU-only torch first so the requirements do not pull the CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Settings need a database URL and production secrets to load; collectstatic touches neither.
RUN DJANGO_ENV=production SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(64))')" \
    ALLOWED_HOSTS=build DATABASE_URL=postgres://build@localhost/build python manage.py collectstatic --noinput
RUN useradd --create-home docent && mkdir -p /data && chown docent /data
USER docent
EXPOSE 8000
CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
