CREATE SCHEMA "semaphore";
--> statement-breakpoint
CREATE TABLE "app_reports" (
	"id" integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "app_reports_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 2147483647 START WITH 1 CACHE 1),
	"title" text NOT NULL,
	"summary" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "semaphore"."semaphores" (
	"id" integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "semaphore"."semaphores_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 2147483647 START WITH 1 CACHE 1),
	"name" text NOT NULL,
	"tickets" integer NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "semaphores_name_key" UNIQUE("name"),
	CONSTRAINT "semaphores_name_length" CHECK (char_length("semaphore"."semaphores"."name") BETWEEN 1 AND 200),
	CONSTRAINT "semaphores_tickets_range" CHECK ("semaphore"."semaphores"."tickets" BETWEEN 0 AND 10000)
);
--> statement-breakpoint
CREATE TABLE "semaphore"."tickets" (
	"id" integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "semaphore"."tickets_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 2147483647 START WITH 1 CACHE 1),
	"semaphore_id" integer NOT NULL,
	"no" integer NOT NULL,
	CONSTRAINT "tickets_semaphore_no_key" UNIQUE("semaphore_id","no")
);
--> statement-breakpoint
CREATE TABLE "semaphore"."waiting_jobs" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "semaphore"."waiting_jobs_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"semaphore_id" integer NOT NULL,
	"queue" text NOT NULL,
	"job_id" text NOT NULL,
	"since" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "waiting_jobs_key" UNIQUE("semaphore_id","queue","job_id")
);
--> statement-breakpoint
ALTER TABLE "semaphore"."tickets" ADD CONSTRAINT "tickets_semaphore_id_semaphores_id_fk" FOREIGN KEY ("semaphore_id") REFERENCES "semaphore"."semaphores"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "semaphore"."waiting_jobs" ADD CONSTRAINT "waiting_jobs_semaphore_id_semaphores_id_fk" FOREIGN KEY ("semaphore_id") REFERENCES "semaphore"."semaphores"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "waiting_jobs_order" ON "semaphore"."waiting_jobs" USING btree ("semaphore_id","id");